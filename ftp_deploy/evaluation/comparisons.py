"""Each method minus dense and minus static, per task and over the headline tasks, with paired intervals.

All methods answer the same items, so the per-item correctness of two methods forms pairs
(ftp_deploy.stats). Perplexity tasks keep only their totals and are not compared here.
"""

from __future__ import annotations

from ftp_deploy.formats.eval_results import HEADLINE_AVERAGE, MethodResult, TaskFacts
from ftp_deploy.formats.measures import Difference
from ftp_deploy.stats import paired_bootstrap


def _correct(methods: dict[str, MethodResult], method: str, task: str) -> list[int] | None:
    return methods[method].tasks[task].correct


def compare(
    methods: dict[str, MethodResult], tasks: list[str], headline: list[str], method: str, reference: str
) -> dict[str, Difference]:
    """`method - reference` accuracy per task and averaged over `headline`; tasks without per-item data are left out."""
    pairs = {}
    for task in tasks:
        a, b = _correct(methods, method, task), _correct(methods, reference, task)
        if a is not None and b is not None:
            pairs[task] = (a, b)
    found = {task: paired_bootstrap([pair]) for task, pair in pairs.items()}
    averaged = [pairs[task] for task in headline if task in pairs]
    if averaged:
        found[HEADLINE_AVERAGE] = paired_bootstrap(averaged)
    return found


def comparisons(
    methods: dict[str, MethodResult], data: dict[str, TaskFacts], headline: list[str], references: list[str]
) -> dict[str, dict[str, dict[str, Difference]]]:
    """`{reference: {method: {task or headline_average: difference}}}` for every other method."""
    tasks = [t for t, facts in data.items() if facts.kind in ("choice", "target")]
    return {
        reference: {
            method: compare(methods, tasks, headline, method, reference) for method in methods if method != reference
        }
        for reference in references
        if reference in methods
    }
