"""Each method minus dense and minus static, per task and over the headline tasks, with paired intervals.

All methods answer the same items, so the per-item correctness of two methods forms pairs
(ftp_deploy.stats). Perplexity tasks keep only their totals and are not compared here.
"""

from __future__ import annotations

from typing import Any

from ftp_deploy.formats.measures import Difference
from ftp_deploy.formats.record import to_json
from ftp_deploy.stats import paired_bootstrap

AVERAGE = "headline_average"


def _correct(methods: dict[str, dict[str, Any]], method: str, task: str) -> list[int] | None:
    return methods[method]["tasks"][task].get("correct")


def compare(
    methods: dict[str, dict[str, Any]], tasks: list[str], headline: list[str], method: str, reference: str
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
        found[AVERAGE] = paired_bootstrap(averaged)
    return found


def comparisons(
    methods: dict[str, dict[str, Any]], data: dict[str, dict[str, Any]], headline: list[str], references: list[str]
) -> dict[str, dict[str, dict[str, Any]]]:
    """`{reference: {method: {task or headline_average: difference as JSON}}}` for every other method."""
    tasks = [t for t, facts in data.items() if facts["kind"] in ("choice", "target")]
    return {
        reference: {
            method: {task: to_json(d) for task, d in compare(methods, tasks, headline, method, reference).items()}
            for method in methods
            if method != reference
        }
        for reference in references
        if reference in methods
    }
