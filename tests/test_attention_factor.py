"""The attention-score factor against the attention weights transformers itself computes.

attention_factor.py recomputes a block's attention (RoPE, GQA, Qwen3's q/k norms, scaling);
masked-vs-compact and export parity share that code, so only transformers' eager attention
(`output_attentions=True`) can tell whether it is right.
"""

from __future__ import annotations

import pytest
import torch

from ftp_deploy.attention_factor import attention_received
from ftp_deploy.router import token_positions
from tests.conftest import TINY_BUILDERS, random_batch, tiny_model

WINDOW = 5
SEQ_LEN = 18
SHARPEN = 12.0


def expected_scores(probs: torch.Tensor, mask: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """FTP_SPEC section 3 from transformers' probabilities [B, H, T, T], one token at a time:
    the mean over heads and over the last `window` valid queries that see the token of the
    probability it gets, times the query's visible-key count (so uniform attention scores 1)."""
    batch, _, length, _ = probs.shape
    score = torch.zeros(batch, length, dtype=torch.float64)
    seen = torch.zeros(batch, length, dtype=torch.bool)
    for row in range(batch):
        valid = [t for t in range(length) if mask[row, t]]
        queries = valid[-window:]
        for key in valid:
            seers = [q for q in queries if q >= key]
            if not seers:
                continue
            seen[row, key] = True
            visible = [sum(1 for k in valid if k <= q) for q in seers]
            shares = [float(probs[row, :, q, key].double().mean()) * n for q, n in zip(seers, visible, strict=True)]
            score[row, key] = sum(shares) / len(seers)
    return score, seen


def sharpen(model: torch.nn.Module) -> None:
    """Larger queries and keys: the random init attends almost uniformly, where every factor is 1
    and a wrong rotary, scaling or norm would go unseen."""
    for layer in model.model.layers:
        attention = layer.self_attn
        # Qwen3 normalizes q and k per head, undoing the projections' scale: its norms scale instead.
        for part in ("q_norm", "k_norm") if hasattr(attention, "q_norm") else ("q_proj", "k_proj"):
            getattr(attention, part).weight.mul_(SHARPEN)


@pytest.mark.parametrize("padding", [None, "left"])
@pytest.mark.parametrize("arch", sorted(TINY_BUILDERS))
def test_attention_score_matches_transformers_eager_attention(arch: str, padding: str | None) -> None:
    model = tiny_model(arch, num_layers=2)
    model.set_attn_implementation("eager")
    sharpen(model)
    ids, mask = random_batch(2, SEQ_LEN, padding)
    positions = token_positions(mask)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, position_ids=positions, output_attentions=True, output_hidden_states=True)
    for block, layer in enumerate(model.model.layers):
        hidden = out.hidden_states[block]  # the block's input
        cos, sin = model.model.rotary_emb(hidden, positions)
        score, seen = attention_received(layer, hidden, cos, sin, positions, mask.bool(), WINDOW)
        want, want_seen = expected_scores(out.attentions[block], mask, WINDOW)
        assert torch.equal(seen, want_seen)
        assert float(want[want_seen].std()) > 0.3  # far from uniform, so the comparison has teeth
        torch.testing.assert_close(score.double()[seen], want[seen], atol=1e-5, rtol=1e-5)
