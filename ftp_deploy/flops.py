"""FLOPs of a decoder block as a function of the tokens it computes, analytic and measured."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ftp_deploy.schedule import Schedule


def block_flops(config: Any, tokens: int) -> float:
    """Multiply-adds x2 of one LLaMA-family block on `tokens` tokens with causal attention."""
    hidden = config.hidden_size
    head_dim = getattr(config, "head_dim", None) or hidden // config.num_attention_heads
    q_out = config.num_attention_heads * head_dim
    kv_out = config.num_key_value_heads * head_dim
    linear = 2 * tokens * (hidden * (q_out + 2 * kv_out) + q_out * hidden + 3 * hidden * config.intermediate_size)
    # QK^T and PV over the causal half of the score matrix.
    attention = 2 * 2 * config.num_attention_heads * head_dim * tokens * (tokens + 1) / 2
    return float(linear + attention)


def dense_block_weights(config: Any, seq_len: int) -> list[float]:
    """Per-block dense FLOPs, the weights of a FLOP-weighted mean sparsity."""
    return [block_flops(config, seq_len)] * int(config.num_hidden_layers)


def flop_ratio(config: Any, schedule: Schedule, seq_len: int) -> float:
    """Routed-to-dense FLOPs of the decoder blocks at `seq_len` tokens (top-k capacity)."""
    routed = sum(block_flops(config, schedule.kept(b, seq_len)) for b in range(len(schedule)))
    return routed / sum(dense_block_weights(config, seq_len))


def measured_flops(module: nn.Module, *args: Any, **kwargs: Any) -> int:
    """FLOPs torch's dispatcher counts for one call (matmuls and attention)."""
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        module(*args, **kwargs)
    return int(counter.get_total_flops())
