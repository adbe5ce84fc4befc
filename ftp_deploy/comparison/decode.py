"""Decode parity: a generation runtime's prefill + cached decode against the PyTorch reference of FTP_SPEC section 9.

Both sides are fed the same tokens (the reference's greedy picks), so a step that disagrees does
not derail the ones after it. Per step: the candidate's logits against the masked-mode forward
over prompt + generated tokens with the prefill's keep decisions (`masked_forward_with_keep`),
its greedy token against the reference's, and at the end its cache, block by block, against
PyTorch's RoutedCache (lengths, and keys and values at valid slots). Decode steps are timed.
"""

from __future__ import annotations

import statistics
import time
from typing import Any, Protocol

import numpy as np
import torch

from ftp_deploy.comparison.parity import allows
from ftp_deploy.formats.verify_report import DecodeReport, Tolerance
from ftp_deploy.generation.reference import decode_step, extended_keep, masked_forward_with_keep, routed_prefill
from ftp_deploy.routed_model import RoutedModel


class CachedDecoder(Protocol):
    """What a generation runtime offers the check: numpy in, numpy out, one cache held inside."""

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int) -> np.ndarray:
        """Routes the prompt [B, T] (left padded) and fills the cache, with room for `max_new_tokens` more;
        next-token logits [B, vocab]."""
        ...

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        """One token per row [B, 1] through every block; its next-token logits [B, vocab]."""
        ...

    def cache_layers(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        """Each block's (keys [B, kv_heads, L, head_dim], values, slot validity [B, L]), in any slot layout
        that keeps each row's valid entries in PyTorch's order."""
        ...


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max(initial=0.0))


@torch.no_grad()
def check_decode(
    routed: RoutedModel,
    candidate: CachedDecoder,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    steps: int,
    tolerance: Tolerance,
    same_tokens: bool = True,
) -> DecodeReport:
    """Prefill and `steps` decode steps of `candidate` against PyTorch (see the module docstring).

    `same_tokens`: a greedy token that differs from PyTorch's fails the check even with its logits within
    tolerance (verify's verdict); export validation, on random prompts where near ties happen, leaves it
    to the logits.
    """
    ids_np, mask_np = input_ids.numpy(), attention_mask.numpy()
    reference = routed_prefill(routed, input_ids, attention_mask)
    cand_logits = candidate.prefill(ids_np, mask_np, steps)
    expected = masked_forward_with_keep(routed, input_ids, attention_mask, reference.keep)[:, -1].numpy()
    worst = _max_abs(cand_logits, expected)
    logits_ok = allows(tolerance, cand_logits, expected)
    tokens = reference.logits.argmax(-1, keepdim=True)
    mismatch = None if np.array_equal(cand_logits.argmax(-1), tokens[:, 0].numpy()) else 0
    sequence, mask = input_ids, attention_mask
    times = []
    for step in range(1, steps + 1):
        sequence = torch.cat([sequence, tokens], dim=1)
        mask = torch.cat([mask, torch.ones_like(tokens)], dim=1)
        start = time.perf_counter()
        cand_logits = candidate.decode(tokens.numpy())
        times.append(time.perf_counter() - start)
        torch_logits = decode_step(routed, tokens, reference.cache)
        keep = extended_keep(reference.keep, step)
        expected = masked_forward_with_keep(routed, sequence, mask, keep)[:, -1].numpy()
        worst = max(worst, _max_abs(cand_logits, expected))
        logits_ok = logits_ok and allows(tolerance, cand_logits, expected)
        tokens = torch_logits.argmax(-1, keepdim=True)
        if mismatch is None and not np.array_equal(cand_logits.argmax(-1), tokens[:, 0].numpy()):
            mismatch = step
    lengths_equal, cache_diff, cache_ok = _compare_cache(candidate.cache_layers(), reference.cache, tolerance)
    failures = []
    if mismatch is not None and same_tokens:
        failures.append(f"decode: greedy token differs from PyTorch's at step {mismatch}")
    if not logits_ok:
        failures.append(
            f"decode: logits max |diff| {worst:.3g} against the masked reference, beyond atol {tolerance.atol:g} x "
            f"the token's largest |logit| and rtol {tolerance.rtol:g}"
        )
    if not lengths_equal:
        failures.append("decode: cached entries per row and block differ from PyTorch's")
    elif not cache_ok:
        failures.append(f"decode: cached keys/values max |diff| {cache_diff:.3g} at valid slots, beyond tolerance")
    return DecodeReport(
        steps=steps,
        batch=int(input_ids.shape[0]),
        prompt_len=int(input_ids.shape[1]),
        tokens_identical=mismatch is None,
        first_token_mismatch=mismatch,
        logits_max_abs_diff=worst,
        logits_passed=logits_ok,
        cache_lengths_equal=lengths_equal,
        cache_max_abs_diff=cache_diff,
        cache_passed=lengths_equal and cache_ok,
        decode_median_ms=statistics.median(times) * 1e3 if times else 0.0,
        failures=failures,
    )


def _compare_cache(
    candidate: list[tuple[np.ndarray, np.ndarray, np.ndarray]], reference: Any, tolerance: Tolerance
) -> tuple[bool, float, bool]:
    """(each row's valid count per block equal, max |diff| of keys and values at valid slots, within tolerance).

    Valid slots are compared in order, row by row: a concat cache holds them where PyTorch's does, an
    in-place one packed first; both attend to the same entries.
    """
    if len(candidate) != len(reference.layers):
        return False, float("nan"), False
    worst, ok = 0.0, True
    for (keys, values, valid), (ref_keys, ref_values, _), ref_valid in zip(
        candidate, reference, reference.slot_valid, strict=True
    ):
        slots, ref_slots = valid.astype(bool), ref_valid.numpy().astype(bool)
        if not np.array_equal(slots.sum(1), ref_slots.sum(1)):
            return False, float("nan"), False
        for got, want in ((keys, ref_keys.numpy()), (values, ref_values.numpy())):
            # [B, H, L, D] -> the valid slots' [H, D] vectors, row by row in slot order
            got_valid, want_valid = got.transpose(0, 2, 1, 3)[slots], want.transpose(0, 2, 1, 3)[ref_slots]
            worst = max(worst, _max_abs(got_valid, want_valid))
            ok = ok and allows(tolerance, got_valid, want_valid)
    return True, worst, ok


class OnnxDecoder:
    """engines.onnx_generation.OnnxGenerator as a CachedDecoder: its cache read back layer by layer."""

    def __init__(self, generator: Any) -> None:
        self.generator = generator

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int) -> np.ndarray:
        return np.asarray(self.generator.prefill(input_ids, attention_mask, max_new_tokens))

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        return np.asarray(self.generator.decode(token_ids))

    def cache_layers(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        cache = self.generator.cache
        return [
            (cache.numpy(layer, "key"), cache.numpy(layer, "value"), cache.numpy(layer, "valid"))
            for layer in range(cache.num_layers)
        ]
