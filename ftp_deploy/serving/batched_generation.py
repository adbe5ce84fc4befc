"""One batch of independent generation requests over an export's two ONNX Runtime graphs (FTP_SPEC section 9).

The server's model hands a batch of requests that arrived together to `generate_rows`. Each row
must come out as it would alone (`ftp-deploy generate --runtime onnxrt`), which shapes the loop:

- **Prefill by prompt length.** A block keeps `K = T - (T * n) // 1000` tokens of a prompt padded
  to width T and routes padding out first, so a left-padded row would keep more of its own tokens
  than it does alone. Rows of one length are prefilled together (no padding); each length is its
  own prefill call, and its rows' first tokens go out as soon as it is done.
- **Decode together.** The caches of the prefill calls are joined along the batch axis: each
  layer's slot axis is padded on the left with empty slots (`valid` False, which the decode graph
  masks out, as it does a left-padded prompt's), so every row attends to exactly its own cache;
  an in-place cache's buffers are padded on the right instead, beyond every row's cached count.
- **Each row ends on its own** end-of-sequence token, its own `max_tokens`, or when its client is
  gone; it then leaves the batch (its cache rows are dropped), so no row decodes past its context.

Each row draws through the one sampler (generation/sampling) of its own, seeded by the row's seed,
so a seeded request draws what `generate --do-sample --seed S` draws.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from ftp_deploy.engines.onnx_generation import OnnxCache, OnnxGenerator
from ftp_deploy.formats.export_manifest import CACHE_PARTS, present_name
from ftp_deploy.generation.sampling import Sampler

STOP, LENGTH, CANCELLED = "stop", "length", "cancelled"  # why a row ended


@dataclass(frozen=True)
class RowRequest:
    """One prompt (token ids, [T]) and how to continue it; checked by the caller (`triton_model.parse_request`)."""

    prompt: np.ndarray
    max_tokens: int
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass
class RowResult:
    """What one row produced: its tokens (end-of-sequence left out, as `generate` prints), why it ended, times.

    `ttft_s` and `total_s` count from the start of the batch; `token_times` are when each token was picked.
    """

    tokens: list[int] = field(default_factory=list)
    finish_reason: str = ""
    ttft_s: float = 0.0
    total_s: float = 0.0
    token_times: list[float] = field(default_factory=list)

    @property
    def decode_ms_per_token(self) -> float | None:
        if len(self.token_times) < 2:
            return None
        return (self.token_times[-1] - self.token_times[0]) * 1e3 / (len(self.token_times) - 1)


# on_token(row index, token id) -> False when the row's client is gone (the row then stops).
TokenSink = Callable[[int, int], bool]


def generate_rows(
    generator: OnnxGenerator, rows: Sequence[RowRequest], on_token: TokenSink | None = None
) -> list[RowResult]:
    """Continue every row; `on_token` sees each row's tokens as they are made (streaming)."""
    start = time.perf_counter()
    eos = set(generator.record.eos_token_ids)
    results = [RowResult() for _ in rows]
    samplers = [Sampler(row.do_sample, row.temperature, row.top_p, row.seed) for row in rows]

    def accept(index: int, token: int) -> bool:
        """Record a row's new token; True while the row goes on."""
        result, now = results[index], time.perf_counter()
        if not result.token_times:
            result.ttft_s = now - start
        result.token_times.append(now)
        if token in eos:
            result.finish_reason = STOP
        else:
            result.tokens.append(token)
            if on_token is not None and not on_token(index, token):
                result.finish_reason = CANCELLED
            elif len(result.token_times) >= rows[index].max_tokens:
                result.finish_reason = LENGTH
        if result.finish_reason:
            result.total_s = now - start
        return not result.finish_reason

    # Prefill, one call per prompt length; the first tokens go out per call.
    order: list[int] = []
    parts: list[OnnxCache] = []
    for indices in _by_length(rows):
        ids = np.stack([rows[i].prompt for i in indices]).astype(np.int64)
        logits = generator.prefill(ids, np.ones_like(ids), max(rows[i].max_tokens for i in indices))
        assert generator.cache is not None
        parts.append(generator.cache)
        order.extend(indices)
        picked = _pick_rows(logits, [samplers[i] for i in indices])
        for i, token in zip(indices, picked, strict=True):
            accept(i, token)
    cache = join_caches(parts)
    last = {i: (results[i].tokens[-1] if results[i].tokens else 0) for i in order}

    # Decode every row still going, one token each per step.
    while True:
        alive = [position for position, i in enumerate(order) if not results[i].finish_reason]
        if not alive:
            return results
        if len(alive) < len(order):
            cache = take_rows(cache, alive)
            order = [order[position] for position in alive]
        tokens = np.array([[last[i]] for i in order], dtype=np.int64)
        logits = generator.decode(tokens, cache)
        picked = _pick_rows(logits, [samplers[i] for i in order])
        for i, token in zip(order, picked, strict=True):
            last[i] = token
            accept(i, token)


def _by_length(rows: Sequence[RowRequest]) -> list[list[int]]:
    """Row indices grouped by prompt length, in order of first arrival."""
    groups: dict[int, list[int]] = {}
    for index, row in enumerate(rows):
        groups.setdefault(int(row.prompt.shape[0]), []).append(index)
    return list(groups.values())


def _pick_rows(logits: np.ndarray, samplers: Sequence[Sampler]) -> list[int]:
    """Each row's next token from its own sampler: argmax for a greedy row, a draw from its generator otherwise."""
    return [int(sampler.pick(logits[row : row + 1])[0]) for row, sampler in enumerate(samplers)]


def join_caches(parts: Sequence[OnnxCache]) -> OnnxCache:
    """The caches of several prefill calls as one batch, each layer's slot axis padded with empty slots."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    inplace = first.lengths is not None
    tensors: dict[str, ort.OrtValue] = {}
    for layer in range(first.num_layers):
        length = max(part.capacity()[layer] for part in parts)
        for name in ("key", "value") if inplace else CACHE_PARTS:
            key = present_name(layer, name)
            axis = 1 if name == "valid" else 2  # valid [B, slots]; key, value [B, kv_heads, slots, head_dim]
            arrays = [_pad_slots(part.tensors[key].numpy(), axis, length, after=inplace) for part in parts]
            tensors[key] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(np.concatenate(arrays)))
    positions = np.concatenate([part.next_position for part in parts])
    if not inplace:
        return OnnxCache(first.export_id, tensors, positions, first.num_layers)
    lengths = [
        np.concatenate([part.lengths[layer] for part in parts if part.lengths is not None])
        for layer in range(first.num_layers)
    ]
    filled = [max(part.layer_lengths()[layer] for part in parts) for layer in range(first.num_layers)]
    return OnnxCache(first.export_id, tensors, positions, first.num_layers, lengths, filled)


def take_rows(cache: OnnxCache, rows: Sequence[int]) -> OnnxCache:
    """The cache of the given batch rows only (rows that ended leave the batch)."""
    index = np.asarray(rows, dtype=np.int64)
    tensors = {
        name: ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value.numpy()[index]))
        for name, value in cache.tensors.items()
    }
    lengths = None if cache.lengths is None else [length[index] for length in cache.lengths]
    return OnnxCache(cache.export_id, tensors, cache.next_position[index], cache.num_layers, lengths, cache.filled)


def _pad_slots(array: np.ndarray, axis: int, length: int, after: bool = False) -> np.ndarray:
    missing = length - array.shape[axis]
    if missing == 0:
        return array
    widths = [(0, 0)] * array.ndim
    widths[axis] = (0, missing) if after else (missing, 0)
    return np.pad(array, widths)  # zeros: empty key/value slots, valid False
