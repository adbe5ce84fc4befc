"""Grouped-query attention that attends each key/value head with its group of query heads.

transformers' eager attention first repeats every key/value head for each query head of its
group (`repeat_kv`), which an exported graph then does with an Expand that writes the whole cache
n_rep times, at every decode step. Folding the group into the query rows instead gives the same
products (query head h = kv_head * n_rep + r, as `repeat_kv` orders them) without the copy. It is
registered with transformers' AttentionInterface, so the Hugging Face layers call it unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

GROUPED_ATTENTION = "ftp_grouped"


def grouped_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """query [B, H, Q, D], key/value [B, KV, S, D], additive mask [B, 1, Q, S] -> ([B, Q, H, D], weights)."""
    batch, heads, queries, dim = query.shape
    kv_heads = key.shape[1]
    groups = query.reshape(batch, kv_heads, heads // kv_heads * queries, dim)
    weights = torch.matmul(groups, key.transpose(2, 3)) * scaling  # [B, KV, n_rep * Q, S]
    if attention_mask is not None:
        rows = weights.shape[-1]
        weights = weights.reshape(batch, kv_heads, heads // kv_heads, queries, rows) + attention_mask.unsqueeze(2)
        weights = weights.reshape(batch, kv_heads, heads // kv_heads * queries, rows)
    weights = torch.nn.functional.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    output = torch.matmul(weights, value).reshape(batch, heads, queries, dim)
    return output.transpose(1, 2).contiguous(), weights


def use_grouped_attention(model: Any) -> None:
    """Make `model`'s attention layers call `grouped_attention` (registered with transformers, with
    eager attention's additive masks)."""
    AttentionInterface.register(GROUPED_ATTENTION, grouped_attention)
    AttentionMaskInterface.register(GROUPED_ATTENTION, eager_mask)
    model.set_attn_implementation(GROUPED_ATTENTION)
