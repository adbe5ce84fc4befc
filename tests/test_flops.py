"""Compact mode cuts real work: per-block FLOPs scale with the kept count."""

from __future__ import annotations

import pytest
import torch

from ftp_deploy.flops import block_flops, flop_ratio, measured_flops
from ftp_deploy.plugins.token_compaction.reference import gather_rows
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec, token_positions
from ftp_deploy.schedule import Schedule
from tests.conftest import tiny_model


def _block_call_flops(model: torch.nn.Module, tokens: int) -> int:
    layer = model.model.layers[0]
    hidden = torch.randn(1, tokens, model.config.hidden_size)
    positions = torch.arange(tokens).unsqueeze(0)
    cos, sin = model.model.rotary_emb(hidden, positions)
    return measured_flops(layer, hidden, position_embeddings=(cos, sin))


def test_block_flops_scale_with_kept_tokens() -> None:
    model = tiny_model()
    dense = _block_call_flops(model, 200)
    for kept in (140, 100, 60):
        compact = _block_call_flops(model, kept)
        # Linear layers dominate: FLOPs fall at least in proportion to the kept count.
        assert compact <= dense * kept / 200 * 1.001
        analytic_linear = block_flops(model.config, kept) - block_flops(model.config, 0)
        assert compact >= 0.9 * (analytic_linear - 2 * 2 * 48 * kept * (kept + 1) / 2)


# The tiny config by hand: hidden 48, 4 query heads and 2 kv heads of 12, MLP 96.
LINEAR_PER_TOKEN = 2 * (48 * (48 + 2 * 24) + 48 * 48 + 3 * 48 * 96)  # q, k, v, o, gate/up/down


def causal_attention(tokens: int) -> int:
    return 2 * 2 * 4 * 12 * tokens * (tokens + 1) // 2  # QK^T and PV, 4 heads of 12, causal half


def test_routed_forward_flops_follow_the_schedule() -> None:
    """The measured saving is the linear layers' work on the skipped tokens, to the FLOP.

    torch's counter sees the matmuls, not the fused attention kernel, so what it measures is
    compared with the linear part; the attention part is checked in the exact ratio below.
    """
    base = tiny_model()
    ids = torch.randint(4, 90, (1, 200))
    schedule = Schedule.from_sparsities([0.1, 0.2, 0.3, 0.4])
    routed = RoutedModel(base, schedule, RouterSpec(kind="static"))
    saved = measured_flops(base, ids, logits_to_keep=1) - measured_flops(routed, ids, logits_to_keep=1)
    kept = [180, 160, 140, 120]  # 200 - (200 * n) // 1000 for n = 100, 200, 300, 400
    assert saved == sum(LINEAR_PER_TOKEN * (200 - k) for k in kept)


def test_flop_ratio_is_exact() -> None:
    config = tiny_model().config
    schedule = Schedule.from_sparsities([0.1, 0.2, 0.3, 0.4])
    routed = sum(LINEAR_PER_TOKEN * k + causal_attention(k) for k in (180, 160, 140, 120))
    dense = 4 * (LINEAR_PER_TOKEN * 200 + causal_attention(200))
    assert flop_ratio(config, schedule, 200) == pytest.approx(routed / dense, rel=1e-12)
    # Odd lengths round the kept count down the contract's way: 7 - (7 * 300) // 1000 = 5.
    uniform = Schedule.uniform(0.3, 4)
    want = (LINEAR_PER_TOKEN * 5 + causal_attention(5)) / (LINEAR_PER_TOKEN * 7 + causal_attention(7))
    assert flop_ratio(config, uniform, 7) == pytest.approx(want, rel=1e-12)


def test_gather_cos_sin_positions_are_original() -> None:
    base = tiny_model()
    mask = torch.ones(1, 10, dtype=torch.long)
    positions = token_positions(mask)
    hidden = torch.zeros(1, 10, 48)
    cos, _ = base.model.rotary_emb(hidden, positions)
    index = torch.tensor([[0, 7, 9]])
    expected, _ = base.model.rotary_emb(hidden[:, :3], index)
    assert torch.allclose(gather_rows(cos, index), expected)
