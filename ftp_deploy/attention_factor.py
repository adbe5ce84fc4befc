"""The attention-score factor: how much attention each kept token receives in a block.

Computed from the last `window` valid queries only, so the block's own attention can stay
a fused kernel (FTP_SPEC section 3 allows this). Values are relative to uniform attention:
a token that gets exactly its share from every query that can see it scores 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb, repeat_kv


def _heads(projection: torch.Tensor, head_dim: int, norm: nn.Module | None) -> torch.Tensor:
    batch, length, _ = projection.shape
    states = projection.view(batch, length, -1, head_dim)
    if norm is not None:  # Qwen3 normalizes q and k per head before rotary
        states = norm(states)
    return states.transpose(1, 2)


def window_slots(slot_valid: torch.Tensor, window: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Compact slots of each row's last `window` valid tokens: (slots [B, W], present [B, W])."""
    width = min(window, slot_valid.shape[1])
    slot = torch.arange(slot_valid.shape[1], device=slot_valid.device).expand_as(slot_valid)
    ranked = torch.where(slot_valid, slot, -1)
    chosen = torch.sort(torch.topk(ranked, width, dim=1).values, dim=1).values
    return chosen.clamp(min=0), chosen >= 0


@torch.no_grad()
def attention_received(
    layer: Any,
    compact: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    positions: torch.Tensor,
    slot_valid: torch.Tensor,
    window: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per kept slot, the mean attention (x visible keys) it gets from the last `window` queries.

    compact, cos, sin, positions, slot_valid are the block's kept slots [B, K, ...].
    Returns (score [B, K], seen [B, K]): `seen` is False where no window query sees the slot.
    """
    attn = layer.self_attn
    normed = layer.input_layernorm(compact)
    slots, present = window_slots(slot_valid, window)
    query_in = torch.gather(normed, 1, slots.unsqueeze(-1).expand(-1, -1, normed.shape[-1]))
    head_dim = attn.head_dim
    query = _heads(attn.q_proj(query_in), head_dim, getattr(attn, "q_norm", None))
    key = _heads(attn.k_proj(normed), head_dim, getattr(attn, "k_norm", None))
    query_cos, query_sin = (torch.gather(t, 1, slots.unsqueeze(-1).expand(-1, -1, t.shape[-1])) for t in (cos, sin))
    query, _ = apply_rotary_pos_emb(query, query, query_cos, query_sin)
    _, key = apply_rotary_pos_emb(key, key, cos, sin)
    key = repeat_kv(key, attn.num_key_value_groups)

    query_pos = torch.gather(positions, 1, slots)
    visible = (positions.unsqueeze(1) <= query_pos.unsqueeze(2)) & slot_valid.unsqueeze(1) & present.unsqueeze(2)
    logits = (query.float() @ key.float().transpose(-1, -2)) * attn.scaling
    # A finite fill keeps inf and NaN out of exported graphs. The rows of absent queries, masked
    # throughout, come out uniform, and their zero visible-key count below cancels them.
    masked = logits.masked_fill(~visible.unsqueeze(1), torch.finfo(torch.float32).min)
    probs = torch.softmax(masked, dim=-1).mean(dim=1)  # over heads
    relative = probs * visible.sum(-1, keepdim=True)
    seen_by = visible.sum(1)
    score = relative.sum(1) / seen_by.clamp(min=1)
    return score, seen_by > 0
