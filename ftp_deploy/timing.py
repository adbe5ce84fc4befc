"""Wall-clock timing shared by the benchmarks and `ftp-deploy verify`."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable


def time_runs(run: Callable[[], object], runs: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `runs` calls, after `warmup` untimed ones."""
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return times


def interleaved_times(fns: dict[str, Callable[[], object]], runs: int, warmup: int = 1) -> dict[str, list[float]]:
    """Seconds of each function, run in turn so drift on a shared machine hits all alike."""
    for fn in fns.values():
        time_runs(fn, 0, warmup)
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            times[name].extend(time_runs(fn, 1, 0))
    return times


def summarize(times: list[float]) -> dict[str, float]:
    """median, p90 (nearest rank) and min, in seconds."""
    ordered = sorted(times)
    return {
        "median_s": statistics.median(ordered),
        "p90_s": ordered[max(0, math.ceil(0.9 * len(ordered)) - 1)],
        "min_s": ordered[0],
    }
