"""Accuracy retention against dense, reported as FTP_SPEC section 8 asks.

Retention = method accuracy / dense accuracy, averaged over the multiple-choice tasks where
dense is at least 5 points above chance (on the others it says nothing about routing);
those others are listed apart, and chance-normalized retention is given as well.
"""

from __future__ import annotations

from statistics import mean

from ftp_deploy.formats.eval_results import ChanceNormalized, MethodResult, Retention, TaskFacts

METRIC = "acc"
MIN_MARGIN = 0.05
# Accuracies are multiples of 1/items; keeps "exactly 5 points above" on the inclusive side.
_TOLERANCE = 1e-9


def _average(values: list[float]) -> float | None:
    return mean(values) if values else None


def retention_summary(methods: dict[str, MethodResult], data: dict[str, TaskFacts], dense: str) -> Retention:
    """Each method's METRIC on the choice tasks against dense's and chance -> the retention figures."""
    tasks = [t for t, facts in data.items() if facts.kind == "choice"]
    chance = {t: float(data[t].chance or 0.0) for t in tasks}
    reference = {t: _metric(methods[dense], t) for t in tasks}
    headline = [t for t in tasks if reference[t] - chance[t] >= MIN_MARGIN - _TOLERANCE]
    summary = Retention(
        metric=METRIC,
        min_margin_over_chance=MIN_MARGIN,
        headline_tasks=headline,
        other_tasks={
            t: f"dense {METRIC} {reference[t]:.3f} is less than {MIN_MARGIN:.2f} above chance {chance[t]:.3f}"
            for t in tasks
            if t not in headline
        },
    )
    for name, result in methods.items():
        accuracy = {t: _metric(result, t) for t in tasks}
        per_task = {t: accuracy[t] / reference[t] if reference[t] > 0 else None for t in tasks}
        normalized = {t: (accuracy[t] - chance[t]) / (reference[t] - chance[t]) for t in headline}
        summary.per_task[name] = per_task
        summary.average[name] = _average([v for t, v in per_task.items() if t in headline and v is not None])
        summary.chance_normalized[name] = ChanceNormalized(_average(list(normalized.values())), normalized)
        summary.average_accuracy[name] = _average([accuracy[t] for t in headline])
    return summary


def _metric(result: MethodResult, task: str) -> float:
    value = getattr(result.tasks[task], METRIC)
    if value is None:
        raise ValueError(f"task {task} has no {METRIC}")
    return float(value)
