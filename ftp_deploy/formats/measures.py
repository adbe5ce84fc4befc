"""Records of measured comparisons that several documents hold (run.json's held-out table, eval's results)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Difference:
    """Mean of `a - b`, its standard error and a bootstrap interval; `a` and `b` scored on the same items
    (ftp_deploy.stats.paired_bootstrap). `inside_noise`: the interval contains zero, so the data do not
    tell the two apart."""

    mean: float
    stderr: float
    low: float
    high: float
    confidence: float
    items: int
    inside_noise: bool


def difference(mean: float, stderr: float, low: float, high: float, confidence: float, items: int) -> Difference:
    return Difference(mean, stderr, low, high, confidence, items, inside_noise=low <= 0.0 <= high)


@dataclass
class FidelitySummary:
    """A routed model against dense over some scored positions (ftp_deploy.fidelity): KL, top-1 agreement,
    both perplexities, and how many positions."""

    kl: float
    top1_agreement: float
    perplexity: float
    dense_perplexity: float
    positions: float
