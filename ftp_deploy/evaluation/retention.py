"""Accuracy retention against dense, reported as FTP_SPEC section 8 asks.

Retention = method accuracy / dense accuracy, averaged over the multiple-choice tasks where
dense is at least 5 points above chance (on the others it says nothing about routing);
those others are listed apart, and chance-normalized retention is given as well.
"""

from __future__ import annotations

from statistics import mean
from typing import Any

METRIC = "acc"
MIN_MARGIN = 0.05
# Accuracies are multiples of 1/items; keeps "exactly 5 points above" on the inclusive side.
_TOLERANCE = 1e-9


def _average(values: list[float]) -> float | None:
    return mean(values) if values else None


def retention_summary(
    methods: dict[str, dict[str, Any]], data: dict[str, dict[str, Any]], dense: str
) -> dict[str, Any]:
    """`methods[m]["tasks"][t][METRIC]` and `data[t]["chance"]` for the choice tasks -> retention figures."""
    tasks = [t for t, facts in data.items() if facts["kind"] == "choice"]
    chance = {t: float(data[t]["chance"]) for t in tasks}
    reference = {t: float(methods[dense]["tasks"][t][METRIC]) for t in tasks}
    headline = [t for t in tasks if reference[t] - chance[t] >= MIN_MARGIN - _TOLERANCE]
    summary: dict[str, Any] = {
        "metric": METRIC,
        "min_margin_over_chance": MIN_MARGIN,
        "headline_tasks": headline,
        "other_tasks": {
            t: f"dense {METRIC} {reference[t]:.3f} is less than {MIN_MARGIN:.2f} above chance {chance[t]:.3f}"
            for t in tasks
            if t not in headline
        },
        "average": {},
        "per_task": {},
        "chance_normalized": {},
        "average_accuracy": {},
    }
    for name, result in methods.items():
        accuracy = {t: float(result["tasks"][t][METRIC]) for t in tasks}
        per_task = {t: accuracy[t] / reference[t] if reference[t] > 0 else None for t in tasks}
        normalized = {t: (accuracy[t] - chance[t]) / (reference[t] - chance[t]) for t in headline}
        summary["per_task"][name] = per_task
        summary["average"][name] = _average([v for t, v in per_task.items() if t in headline and v is not None])
        summary["chance_normalized"][name] = {"average": _average(list(normalized.values())), "per_task": normalized}
        summary["average_accuracy"][name] = _average([accuracy[t] for t in headline])
    return summary
