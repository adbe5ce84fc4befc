"""Parity of an exported model against the PyTorch reference, through Polygraphy's Comparator.

The one comparison both export validation (exporters/validation.py) and `ftp-deploy verify` run,
with one tolerance definition (`Tolerance`). Padded positions are left out (their values are
free to differ between runtimes), each block's `indices_{l}` becomes a routing-agreement
figure, and when the logits fail the hidden states at block boundaries name the first block
where the error appears. Logits and hidden states are judged in units of each token's largest
|value| (the reference's): see `token_scale` for why and what was measured. Reported logits
errors stay in the logits' own units.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import numpy as np
from polygraphy.comparator import Comparator, RunResults
from polygraphy.comparator.compare import SimpleCompareFunc
from polygraphy.logger import G_LOGGER

from ftp_deploy.comparison.feeds import Feed
from ftp_deploy.formats.verify_report import HIDDEN, OutputParity, ParityReport, Tolerance

_INDICES = re.compile(r"indices_(\d+)$")


def token_scale(values: np.ndarray) -> np.ndarray:
    """Each token's largest |value| over the last axis: the unit a token's logits or hidden state is judged in.

    A token's logits and hidden state are sums over its residual stream, so their float error follows
    the largest terms that stream carried, not each element's size. Measured on SmolLM2-135M (2026-12-02,
    export validation's inputs, all positions, fp32): the MLP down projection of blocks 2 and 11 writes
    the model's massive activations (up to 2.4e4 at the attention sink, about 1.3e3 at a few early
    tokens); at that size one fp32 ulp is about 2e-3, and ONNX Runtime's and PyTorch's MatMuls land
    0.04 and 0.012 from a float64 forward there. The logits of those tokens then differ by up to
    1.2e-3 between the two fp32 runtimes (the dense export too: 1.0e-3), each 4e-4 to 8e-4 from float64,
    which an absolute 1e-3 rejects; in units of the token's largest |logit| that is at most 5e-5.
    Two exact PyTorch paths (compact vs masked) differ by 0.036 on hidden elements near 0 for the same reason.
    """
    return np.maximum(np.abs(values).max(axis=-1, keepdims=True), np.finfo(np.float32).tiny)


def allows(tolerance: Tolerance, candidate: np.ndarray, reference: np.ndarray) -> bool:
    """Every element within tolerance, as the Comparator judges per-token scaled values; NaN fails."""
    diff = np.abs(candidate - reference)
    within_scale = diff <= tolerance.atol * token_scale(reference)
    return bool(np.all(within_scale | (diff <= tolerance.rtol * np.abs(reference))))


def _array(value: Any) -> np.ndarray:
    """Polygraphy hands out LazyArrays from saved results and plain arrays from fresh ones."""
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _valid_rows(name: str, array: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Outputs at valid positions only; last-token logits (one position) are always valid."""
    if array.ndim == 3 and array.shape[1] == mask.shape[1]:
        return np.asarray(array[mask.astype(bool)], dtype=np.float32)
    return np.asarray(array, dtype=np.float32)


def _keep_from_indices(indices: np.ndarray, seq_len: int) -> np.ndarray:
    keep = np.zeros((indices.shape[0], seq_len), dtype=bool)
    np.put_along_axis(keep, indices.astype(np.int64), True, axis=1)
    return keep


def _structure(
    results: RunResults, reference: str, candidate: str, feeds: Sequence[Feed]
) -> tuple[list[str], list[set[str]]]:
    """(what differs in the outputs' names and shapes, per feed the outputs both give alike)."""
    problems: list[str] = []
    comparable: list[set[str]] = []
    for feed, ref, cand in zip(feeds, results[reference], results[candidate], strict=True):
        length = feed["input_ids"].shape[1]
        if set(ref) != set(cand):
            problems.append(f"at length {length} {candidate} outputs {sorted(cand)}, not {sorted(ref)}")
        same = set()
        for name in set(ref) & set(cand):
            want, got = np.shape(_array(ref[name])), np.shape(_array(cand[name]))
            if want != got:
                problems.append(f"{name} at length {length}: shape {got}, expected {want}")
            else:
                same.add(name)
        comparable.append(same)
    return problems, comparable


def _split_results(
    results: RunResults, feeds: Sequence[Feed], comparable: Sequence[set[str]]
) -> tuple[RunResults, dict[str, list[dict[str, Any]]]]:
    """(numeric outputs at valid positions, per-runner routing indices), runner by runner."""
    numeric = RunResults()
    routing: dict[str, list[dict[str, Any]]] = {}
    for runner, iterations in results.items():
        outputs, indices = [], []
        for feed, iteration, names in zip(feeds, iterations, comparable, strict=True):
            mask = feed["attention_mask"]
            kept = {name: array for name, array in iteration.items() if name in names}
            outputs.append(
                {
                    name: _valid_rows(name, _array(array), mask)
                    for name, array in kept.items()
                    if not _INDICES.match(name)
                }
            )
            indices.append({n: _array(a) for n, a in kept.items() if _INDICES.match(n)})
        numeric.add(outputs, runner_name=runner)
        routing[runner] = indices
    return numeric, routing


def _per_token_scale(numeric: RunResults, reference: str) -> RunResults:
    """Logits and hidden states divided by the reference's `token_scale`, for both runners: what the
    tolerances judge."""
    scaled = RunResults()
    for runner, iterations in numeric.items():
        outputs = []
        for ref, iteration in zip(numeric[reference], iterations, strict=True):
            outputs.append(
                {
                    name: _array(array) / token_scale(_array(ref[name])) if _scaled(name) else array
                    for name, array in iteration.items()
                }
            )
        scaled.add(outputs, runner_name=runner)
    return scaled


def _scaled(name: str) -> bool:
    return name == "logits" or bool(HIDDEN.match(name))


def _routing_agreement(
    reference: list[dict[str, Any]], candidate: list[dict[str, Any]], feeds: Sequence[Feed]
) -> float | None:
    agree = total = 0
    for ref, cand, feed in zip(reference, candidate, feeds, strict=True):
        valid = feed["attention_mask"].astype(bool)
        for name, ref_indices in ref.items():
            if name not in cand:
                continue
            seq_len = valid.shape[1]
            same = _keep_from_indices(ref_indices, seq_len) == _keep_from_indices(cand[name], seq_len)
            agree += int(same[valid].sum())
            total += int(valid.sum())
    return agree / total if total else None


def _hidden_max_abs_diff(numeric: RunResults, reference: str, candidate: str) -> float | None:
    diffs = [
        np.abs(_array(ref[name]) - _array(cand[name])).max(initial=0.0)
        for ref, cand in zip(numeric[reference], numeric[candidate], strict=True)
        for name in ref
        if HIDDEN.match(name)
    ]
    return _worst(diffs) if diffs else None


def _top1_agreement(numeric: RunResults, reference: str, candidate: str) -> float:
    agree = total = 0
    for ref, cand in zip(numeric[reference], numeric[candidate], strict=True):
        if "logits" not in ref or "logits" not in cand:
            continue  # a mismatch the report already names
        a = _array(ref["logits"]).argmax(-1)
        b = _array(cand["logits"]).argmax(-1)
        agree += int((a == b).sum())
        total += a.size
    return agree / total if total else 0.0


def _output_stats(verdicts: list[Any], quantiles: list[Any], judged: list[Any]) -> list[OutputParity]:
    """Worst value over the feeds of each statistic, per output; `judged` (the scaled comparison) passes or fails it."""
    per_output: dict[str, list[Any]] = {}
    per_output_p99: dict[str, list[Any]] = {}
    passed: dict[str, bool] = {}
    for verdict, quantile, judgement in zip(verdicts, quantiles, judged, strict=True):
        for name, result in verdict.items():
            per_output.setdefault(name, []).append(result)
            per_output_p99.setdefault(name, []).append(quantile[name])
            passed[name] = passed.get(name, True) and bool(judgement[name])
    stats = []
    for name, results in per_output.items():
        p99 = per_output_p99[name]
        absolute = {
            "max": _worst(r.max_absdiff for r in results),
            "mean": _worst(r.mean_absdiff for r in results),
            "median": _worst(r.median_absdiff for r in results),
            "p99": _worst(r.quantile_absdiff for r in p99),
        }
        relative = {
            "max": _worst(r.max_reldiff for r in results),
            "mean": _worst(r.mean_reldiff for r in results),
            "median": _worst(r.median_reldiff for r in results),
            "p99": _worst(r.quantile_reldiff for r in p99),
        }
        stats.append(OutputParity(name, passed[name], absolute, relative))
    return stats


def _worst(values: Iterable[Any]) -> float:
    """The largest value, NaN if any is NaN (the builtin max hides a NaN that comes first)."""
    return float(np.max(np.asarray(list(values), dtype=np.float64)))


def _first_failing_block(outputs: list[OutputParity]) -> str | None:
    failing = sorted(int(m.group(1)) for o in outputs if not o.passed and (m := HIDDEN.match(o.name)))
    return f"model.layers.{failing[0]}" if failing else None


def _compare(results: RunResults, tolerance: Tolerance, stat: str) -> Any:
    """Polygraphy's comparison of the two runners, element-wise or at the 0.99 quantile."""
    quantile = {"error_quantile": 0.99} if stat == "quantile" else {}
    compare_func = SimpleCompareFunc(atol=tolerance.atol, rtol=tolerance.rtol, check_error_stat=stat, **quantile)
    return Comparator.compare_accuracy(results, compare_func=compare_func)[0]  # [0]: the one compare function


def _merge(plain: RunResults, scaled: RunResults, use_scaled: Callable[[str], bool]) -> RunResults:
    """Per output, the scaled results where `use_scaled(name)`, else the plain ones."""
    merged = RunResults()
    for runner, iterations in plain.items():
        outputs = [
            {name: (scaled_iteration[name] if use_scaled(name) else array) for name, array in iteration.items()}
            for iteration, scaled_iteration in zip(iterations, scaled[runner], strict=True)
        ]
        merged.add(outputs, runner_name=runner)
    return merged


def check_parity(
    reference: Any,
    candidate: Any,
    feeds: Sequence[Feed],
    tolerance: Tolerance,
) -> tuple[ParityReport, RunResults]:
    """Run both runners on every feed and compare them; returns the report and the raw results."""
    # Polygraphy logs each mismatch as an error line; the report names every failure itself.
    with G_LOGGER.verbosity(G_LOGGER.CRITICAL):
        results = Comparator.run([reference, candidate], data_loader=list(feeds))
        mismatches, comparable = _structure(results, reference.name, candidate.name, feeds)
        numeric, routing = _split_results(results, feeds, comparable)
        hidden_diff = _hidden_max_abs_diff(numeric, reference.name, candidate.name)
        scaled = _per_token_scale(numeric, reference.name)
        # The verdict is element-wise on the scaled values; the logits' statistics are reported in
        # their own units, the hidden states' in units of each token's scale.
        judged = _compare(scaled, tolerance, "elemwise")
        reported = _merge(numeric, scaled, lambda name: bool(HIDDEN.match(name)))
        verdict = _compare(reported, tolerance, "elemwise")
        # Polygraphy computes quantiles only when they are the checked statistic: p99 takes its own pass.
        quantiles = _compare(reported, tolerance, "quantile")
    pair = (reference.name, candidate.name)
    outputs = _output_stats(verdict[pair], quantiles[pair], judged[pair])
    logits_failed = any(o.name == "logits" and not o.passed for o in outputs)
    report = ParityReport(
        tolerance=tolerance,
        outputs=outputs,
        top1_agreement=_top1_agreement(numeric, *pair),
        routing_agreement=_routing_agreement(routing[reference.name], routing[candidate.name], feeds),
        first_failing_block=_first_failing_block(outputs) if logits_failed else None,
        hidden_max_abs_diff=hidden_diff,
        mismatches=mismatches,
        feeds=[{"batch": int(f["input_ids"].shape[0]), "seq_len": int(f["input_ids"].shape[1])} for f in feeds],
    )
    return report, results
