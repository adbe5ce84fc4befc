"""Standard errors and paired bootstrap intervals, so a comparison says whether its difference is real.

Every method is scored on the same items (or windows), so a difference between two methods
is judged on the per-item differences: resampling items keeps each item's pair together,
which cancels the item-to-item variation both methods share.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ftp_deploy.formats.measures import Difference, difference

RESAMPLES = 2000
CONFIDENCE = 0.95
BOOTSTRAP_SEED = 0


def standard_error(values: Sequence[float]) -> float:
    """Standard error of the mean (sample standard deviation / sqrt(n)); 0 for fewer than two values."""
    n = len(values)
    return float(np.std(np.asarray(values, dtype=np.float64), ddof=1) / math.sqrt(n)) if n > 1 else 0.0


def describe(found: Difference, scale: float = 1.0, digits: int = 1) -> str:
    """`+1.2 [-0.3, +2.7] (noise)`, in units of `scale` (100: points of accuracy)."""
    mean, low, high = (scale * value for value in (found.mean, found.low, found.high))
    text = f"{mean:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"
    return text + (" (noise)" if found.inside_noise else "")


def paired_bootstrap(
    groups: Sequence[tuple[Sequence[float], Sequence[float]]],
    resamples: int = RESAMPLES,
    confidence: float = CONFIDENCE,
    seed: int = BOOTSTRAP_SEED,
) -> Difference:
    """Difference of means of `a - b`, averaged over groups (tasks), with a percentile bootstrap interval.

    Each group is a pair of equally long per-item scores of two methods on the same items.
    Items are resampled within their group (a stratified bootstrap), so a task keeps its
    size and the average stays an average over tasks. One group is the plain paired bootstrap.
    """
    if not groups:
        raise ValueError("paired_bootstrap needs at least one group of items")
    diffs = []
    for a, b in groups:
        if len(a) != len(b) or not len(a):
            raise ValueError(f"paired scores must be non-empty and equally long, got {len(a)} and {len(b)}")
        diffs.append(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))
    rng = np.random.default_rng(seed)
    means = np.zeros(resamples)
    for d in diffs:
        picks = rng.integers(0, len(d), size=(resamples, len(d)))
        means += d[picks].mean(axis=1)
    means /= len(diffs)
    tail = (1 - confidence) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    # Groups are independent, so the variance of their average is the mean of variances / groups.
    stderr = math.sqrt(sum(standard_error(d.tolist()) ** 2 for d in diffs)) / len(diffs)
    return difference(
        mean=float(np.mean([d.mean() for d in diffs])),
        stderr=stderr,
        low=float(low),
        high=float(high),
        confidence=confidence,
        items=sum(len(d) for d in diffs),
    )


def spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of per-seed results."""
    array = np.asarray(values, dtype=np.float64)
    return {
        "mean": float(array.mean()),
        "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0,
        "min": float(array.min()),
        "max": float(array.max()),
        "n": float(len(array)),
    }
