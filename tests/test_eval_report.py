"""Retention as FTP_SPEC section 8 defines it, the metrics it rests on, and the written report."""

from __future__ import annotations

import pytest

from ftp_deploy.evaluation.loaders import ChoiceItem
from ftp_deploy.evaluation.metrics import chance_accuracy, choice_metrics
from ftp_deploy.evaluation.retention import retention_summary
from ftp_deploy.evaluation.scoring import LogLikelihood
from ftp_deploy.formats.eval_results import Compute, MethodResult, TaskFacts, TaskScores


def test_acc_sums_and_acc_norm_divides_by_bytes() -> None:
    items = [ChoiceItem("q", (" a", " bbbbbb"), 1), ChoiceItem("q", (" é", " x"), 0)]
    scores = [
        LogLikelihood(-2.0, False),
        LogLikelihood(-3.0, False),
        LogLikelihood(-2.5, False),
        LogLikelihood(-2.0, False),
    ]
    metrics = choice_metrics(items, scores)
    # Item 1: -2 > -3, but per byte -3/7 > -2/2. Item 2: " é" is 3 bytes: -2.5/3 > -2/2.
    assert metrics.predictions == [0, 1]
    assert metrics.predictions_norm == [1, 0]
    assert (metrics.acc, metrics.acc_norm) == (0.0, 1.0)


def test_ties_go_to_the_first_choice() -> None:
    items = [ChoiceItem("q", (" a", " b"), 1)]
    assert choice_metrics(items, [LogLikelihood(-1.0, False)] * 2).predictions == [0]


def test_chance_is_the_majority_answer_for_a_fixed_choice_set() -> None:
    yes_no = [ChoiceItem("q", (" no", " yes"), label) for label in (1, 1, 1, 0)]
    assert chance_accuracy(yes_no) == 0.75
    varied = [ChoiceItem("q", (" a", " b", " c", " d"), 0), ChoiceItem("q", (" a", " b"), 0)]
    assert chance_accuracy(varied) == pytest.approx((0.25 + 0.5) / 2)


def results_for(acc: dict[str, dict[str, float]]) -> dict[str, MethodResult]:
    return {
        method: MethodResult(method, Compute(0.0, 1.0), {t: TaskScores(acc=a) for t, a in tasks.items()})
        for method, tasks in acc.items()
    }


def choice(chance: float) -> TaskFacts:
    return TaskFacts("choice", {}, available=100, chance=chance)


def test_headline_average_takes_only_tasks_clear_of_chance() -> None:
    data = {
        "arc": choice(0.25),
        "obqa": choice(0.25),
        "boolq": choice(0.62),
        "wiki": TaskFacts("perplexity", {}, available=10),
    }
    methods = results_for(
        {
            "dense": {"arc": 0.60, "obqa": 0.30, "boolq": 0.41},
            "static": {"arc": 0.45, "obqa": 0.28, "boolq": 0.62},
        }
    )
    summary = retention_summary(methods, data, "dense")
    assert summary.headline_tasks == ["arc", "obqa"]
    assert list(summary.other_tasks) == ["boolq"]
    assert summary.average["static"] == pytest.approx((0.45 / 0.60 + 0.28 / 0.30) / 2)
    assert summary.average["dense"] == 1.0
    assert summary.per_task["static"]["boolq"] == pytest.approx(0.62 / 0.41)
    normalized = summary.chance_normalized["static"]
    assert normalized.per_task["arc"] == pytest.approx(0.20 / 0.35)
    assert normalized.average == pytest.approx((0.20 / 0.35 + 0.03 / 0.05) / 2)
    assert summary.average_accuracy["static"] == pytest.approx((0.45 + 0.28) / 2)


@pytest.mark.parametrize(
    ("dense", "headline"),
    # 0.30 - 0.25 is 0.04999... in floating point: exactly 5 points above chance must count.
    [(0.30, True), (0.2999, False), (0.26, False), (0.31, True)],
)
def test_headline_margin_is_five_points_above_chance(dense: float, headline: bool) -> None:
    data = {"obqa": choice(0.25)}
    summary = retention_summary(results_for({"dense": {"obqa": dense}, "ftp": {"obqa": 0.27}}), data, "dense")
    assert summary.headline_tasks == (["obqa"] if headline else [])


def test_no_informative_task_gives_no_average() -> None:
    data = {"boolq": choice(0.62)}
    summary = retention_summary(results_for({"dense": {"boolq": 0.41}, "ftp": {"boolq": 0.5}}), data, "dense")
    assert summary.headline_tasks == []
    assert summary.average == {"dense": None, "ftp": None}
