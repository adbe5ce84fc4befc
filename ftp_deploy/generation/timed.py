"""Cached generation through transformers' own `generate`, timed: dense (DynamicCache) and routed (RoutedCache).

`generate` owns the loop (greedy or sampling, `max_new_tokens`, EOS); a streamer records when
each token leaves it, which gives time to first token and decode time per token without a loop
of our own, and forwards the tokens to an optional text streamer. ONNX Runtime's generator
(engines/onnx_generation.py) is timed by the same clock through its per-token callback.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import DynamicCache, TextStreamer
from transformers.generation.streamers import BaseStreamer

from ftp_deploy.generation.cache import RoutedCache, kv_bytes
from ftp_deploy.generation.model import RoutedForCausalLM
from ftp_deploy.generation.settings import GenerationSettings
from ftp_deploy.routed_model import RoutedModel


@dataclass
class Generation:
    """New token ids per row (EOS and what follows it left out) and how long each part took.

    `ttft_s`: from the call to the first new token (prefill and first pick). `decode_ms_per_token`:
    the mean time of each later token, None when only one was made. `kv_bytes`: the cache's keys
    and values when generation ended (prompt and generated tokens).
    """

    token_ids: list[list[int]]
    prompt_tokens: int
    ttft_s: float
    decode_ms_per_token: float | None
    total_s: float
    kv_bytes: int

    @property
    def new_tokens(self) -> int:
        return max((len(row) for row in self.token_ids), default=0)


class TokenClock(BaseStreamer):
    """Times each `put` of `generate` (the first is the prompt), and passes the tokens on to `inner`."""

    def __init__(self, inner: BaseStreamer | None = None) -> None:
        self.inner = inner
        self.start = time.perf_counter()
        self.token_times: list[float] = []
        self._prompt_seen = False

    def put(self, value: torch.Tensor | np.ndarray) -> None:
        if self._prompt_seen:
            self.token_times.append(time.perf_counter())
        self._prompt_seen = True
        if self.inner is not None:
            self.inner.put(value)

    def end(self) -> None:
        if self.inner is not None:
            self.inner.end()

    def ttft_s(self) -> float:
        return self.token_times[0] - self.start if self.token_times else 0.0

    def decode_ms_per_token(self) -> float | None:
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) * 1e3 / (len(self.token_times) - 1)


class CallbackTextStreamer(TextStreamer):
    """transformers' TextStreamer (word-boundary flushing), handing the text to a callback instead of print."""

    def __init__(self, tokenizer: Any, on_text: Callable[[str], None]) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.on_text = on_text

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.on_text(text + ("\n" if stream_end else ""))


def _until_eos(new: list[list[int]], eos: set[int]) -> list[list[int]]:
    rows = []
    for row in new:
        end = next((i for i, token in enumerate(row) if token in eos), len(row))
        rows.append(row[:end])
    return rows


def _eos_ids(eos_token_id: int | list[int] | None) -> set[int]:
    if eos_token_id is None:
        return set()
    return {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)


@torch.no_grad()
def timed_generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    cache: DynamicCache,
    settings: GenerationSettings,
    pad_token_id: int,
    eos_token_id: int | list[int] | None,
    streamer: BaseStreamer | None = None,
) -> Generation:
    """`model.generate` with `cache` (left-padded rows), timed token by token."""
    if settings.seed is not None:
        torch.manual_seed(settings.seed)
    clock = TokenClock(streamer)
    sequences = model.generate(
        input_ids,
        attention_mask=attention_mask,
        cache=cache,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        streamer=clock,
        **settings.generate_kwargs(),
    )
    total = time.perf_counter() - clock.start
    return Generation(
        token_ids=_until_eos(sequences[:, input_ids.shape[1] :].tolist(), _eos_ids(eos_token_id)),
        prompt_tokens=int(input_ids.shape[1]),
        ttft_s=clock.ttft_s(),
        decode_ms_per_token=clock.decode_ms_per_token(),
        total_s=total,
        kv_bytes=kv_bytes(cache),
    )


def generate_dense(
    base: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings,
    pad_token_id: int,
    eos_token_id: int | list[int] | None,
    streamer: BaseStreamer | None = None,
) -> Generation:
    """The unrouted model with transformers' own DynamicCache."""
    return timed_generate(
        base, input_ids, attention_mask, DynamicCache(), settings, pad_token_id, eos_token_id, streamer
    )


def generate_routed(
    routed: RoutedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    settings: GenerationSettings,
    pad_token_id: int,
    eos_token_id: int | list[int] | None,
    streamer: BaseStreamer | None = None,
) -> Generation:
    """The routed model (FTP_SPEC section 9) with its per-layer compacted RoutedCache."""
    return timed_generate(
        RoutedForCausalLM(routed).eval(),
        input_ids,
        attention_mask,
        RoutedCache(),
        settings,
        pad_token_id,
        eos_token_id,
        streamer,
    )


def generate_onnx(
    generator: Any,
    input_ids: np.ndarray,
    attention_mask: np.ndarray,
    settings: GenerationSettings,
    eos_token_id: list[int],
    streamer: BaseStreamer | None = None,
) -> Generation:
    """An ONNX Runtime generator's loop (`engines.onnx_generation.OnnxGenerator.generate`), timed the same way."""
    clock = TokenClock(streamer)
    clock.put(input_ids)  # what transformers' generate hands a streamer first: the prompt
    result = generator.generate(
        input_ids,
        attention_mask,
        max_new_tokens=settings.max_new_tokens,
        eos_token_ids=eos_token_id,
        do_sample=settings.do_sample,
        temperature=settings.temperature,
        top_p=settings.top_p,
        seed=settings.seed,
        on_token=lambda tokens, step: clock.put(tokens),
    )
    clock.end()
    total = time.perf_counter() - clock.start
    return Generation(
        token_ids=_until_eos(result.tokens.tolist(), set(eos_token_id)),
        prompt_tokens=int(input_ids.shape[1]),
        ttft_s=clock.ttft_s(),
        decode_ms_per_token=clock.decode_ms_per_token(),
        total_s=total,
        kv_bytes=generator.kv_bytes(),
    )
