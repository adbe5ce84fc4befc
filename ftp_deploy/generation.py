"""Greedy decoding without a KV cache, the same loop for dense and routed models."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

NextLogits = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Generation:
    token_ids: list[int]
    seconds: float
    prefill_seconds: float


@torch.no_grad()
def greedy_generate(
    next_logits: NextLogits, prompt_ids: torch.Tensor, max_new_tokens: int, eos_id: int | None
) -> Generation:
    """Each step recomputes the whole sequence (prefill-style), since routing has no KV cache yet.

    `next_logits(ids[1, T])` returns the logits of the last position, shape [1, vocab].
    """
    ids = prompt_ids
    new: list[int] = []
    start = time.perf_counter()
    prefill = 0.0
    for step in range(max_new_tokens):
        token = int(next_logits(ids)[0].argmax())
        if step == 0:
            prefill = time.perf_counter() - start
        if eos_id is not None and token == eos_id:
            break
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]], dtype=ids.dtype)], dim=1)
    return Generation(new, time.perf_counter() - start, prefill)
