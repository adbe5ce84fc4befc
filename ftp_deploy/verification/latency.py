"""Latency timed on the runtime's own session (Polygraphy's runners add overhead of their own)."""

from __future__ import annotations

import resource
from collections.abc import Callable, Sequence
from functools import partial

import numpy as np

from ftp_deploy.comparison.feeds import Feed
from ftp_deploy.formats.verify_report import Latency, LatencyComparison
from ftp_deploy.progress import NO_PROGRESS, Progress
from ftp_deploy.timing import interleaved_times, summarize
from ftp_deploy.verification.options import DEFAULT_LATENCY_LENGTHS as DEFAULT_LATENCY_LENGTHS
from ftp_deploy.verification.options import MIN_TIMED_RUNS


def latency_feed(batch: int, seq_len: int, vocab_size: int, seed: int = 0) -> Feed:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab_size, size=(batch, seq_len)).astype(np.int64)
    return Feed(input_ids=ids, attention_mask=np.ones_like(ids))


def _latency(times: list[float], seq_len: int, batch: int) -> Latency:
    stats = summarize(times)
    median = stats["median_s"]
    return Latency(seq_len, batch, len(times), median * 1e3, stats["p90_s"] * 1e3, batch * seq_len / median)


def measure(
    runs_by_name: dict[str, Callable[[], object]], seq_len: int, batch: int, runs: int, warmup: int = 2
) -> dict[str, Latency]:
    """Each function timed in turn, run by run, so load drift on a shared machine hits all alike."""
    times = interleaved_times(runs_by_name, max(runs, MIN_TIMED_RUNS), warmup)
    return {name: _latency(t, seq_len, batch) for name, t in times.items()}


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def compare_latency(
    routed_run: Callable[[Feed], object],
    dense_run: Callable[[Feed], object] | None,
    feeds: Sequence[Feed],
    ideal_speedup: Callable[[int], float],
    runs: int,
    progress: Progress = NO_PROGRESS,
) -> LatencyComparison:
    """Routed and (optionally) dense timed on the same feeds, one sequence length at a time,
    their runs interleaved."""
    routed, dense = [], []
    for feed in feeds:
        batch, seq_len = feed["input_ids"].shape
        runs_by_name: dict[str, Callable[[], object]] = {"routed": partial(routed_run, feed)}
        if dense_run is not None:
            runs_by_name["dense"] = partial(dense_run, feed)
        with progress.phase(f"time {' and '.join(runs_by_name)} at {seq_len} tokens"):
            measured = measure(runs_by_name, seq_len, batch, runs)
        routed.append(measured["routed"])
        if dense_run is not None:
            dense.append(measured["dense"])
    return LatencyComparison(
        routed=routed,
        dense=dense if dense_run is not None else None,
        ideal_speedup={int(f["input_ids"].shape[1]): ideal_speedup(int(f["input_ids"].shape[1])) for f in feeds},
        peak_rss_mib=peak_rss_mib(),
    )
