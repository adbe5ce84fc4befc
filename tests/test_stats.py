"""Standard errors, paired bootstrap intervals and the eval comparisons built on them, on known inputs."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ftp_deploy.evaluation.comparisons import comparisons
from ftp_deploy.evaluation.report import comparison_lines
from ftp_deploy.formats.eval_results import HEADLINE_AVERAGE, Compute, MethodResult, TaskFacts, TaskScores
from ftp_deploy.stats import describe, paired_bootstrap, spread, standard_error


def test_standard_error_of_known_values() -> None:
    # sample std of 1..4 is sqrt(5/3); over sqrt(4)
    assert standard_error([1.0, 2.0, 3.0, 4.0]) == pytest.approx(math.sqrt(5 / 3) / 2)
    assert standard_error([7.0]) == 0.0


def test_identical_methods_differ_by_nothing_and_sit_in_the_noise() -> None:
    scores = [0, 1, 1, 0, 1]
    d = paired_bootstrap([(scores, scores)])
    assert (d.mean, d.low, d.high, d.stderr) == (0.0, 0.0, 0.0, 0.0)
    assert d.inside_noise


def test_pairing_removes_the_variation_both_methods_share() -> None:
    # Items vary hugely, but a beats b by exactly 0.1 on every item: paired, that is certain.
    shared = np.arange(100, dtype=float) * 10
    d = paired_bootstrap([(shared + 0.1, shared)])
    assert d.mean == pytest.approx(0.1)
    assert d.low == pytest.approx(0.1) and d.high == pytest.approx(0.1)
    assert not d.inside_noise


def test_interval_matches_the_normal_approximation_on_coin_flips() -> None:
    rng = np.random.default_rng(1)
    a = (rng.random(2000) < 0.6).astype(float)
    b = (rng.random(2000) < 0.5).astype(float)
    d = paired_bootstrap([(a, b)], resamples=4000)
    se = standard_error((a - b).tolist())
    assert d.stderr == pytest.approx(se)
    assert d.low == pytest.approx(d.mean - 1.96 * se, abs=0.25 * se)
    assert d.high == pytest.approx(d.mean + 1.96 * se, abs=0.25 * se)
    assert not d.inside_noise  # 10 points apart at 2000 items is far outside +-3 points


def test_small_difference_on_few_items_is_inside_the_noise() -> None:
    a = [1, 0, 1, 1, 0, 0, 1, 0, 1, 1]
    b = [1, 0, 1, 0, 0, 0, 1, 0, 1, 1]  # one item better out of ten
    d = paired_bootstrap([(a, b)])
    assert d.mean == pytest.approx(0.1)
    assert d.inside_noise


def test_groups_are_averaged_as_tasks_not_pooled_as_items() -> None:
    small = ([1.0] * 10, [0.0] * 10)  # +1 on 10 items
    large = ([0.0] * 1000, [0.0] * 1000)  # 0 on 1000 items
    d = paired_bootstrap([small, large])
    assert d.mean == pytest.approx(0.5)  # pooled would be 10 / 1010
    assert d.items == 1010


def test_bootstrap_is_seeded() -> None:
    a, b = [1, 0, 1, 1, 0, 1], [0, 0, 1, 0, 1, 1]
    assert paired_bootstrap([(a, b)], seed=3) == paired_bootstrap([(a, b)], seed=3)


@pytest.mark.parametrize("pair", [([1, 0], [1]), ([], [])])
def test_unpaired_scores_are_refused(pair: tuple[list[int], list[int]]) -> None:
    with pytest.raises(ValueError, match="paired scores"):
        paired_bootstrap([pair])


def test_spread_of_seeds() -> None:
    assert spread([1.0, 2.0, 3.0]) == {"mean": 2.0, "std": 1.0, "min": 1.0, "max": 3.0, "n": 3.0}


def method(correct: dict[str, list[int]]) -> MethodResult:
    tasks = {t: TaskScores(acc=sum(c) / len(c), correct=c) for t, c in correct.items()}
    return MethodResult("a method", Compute(0.0, 1.0), tasks)


def facts(kind: str) -> TaskFacts:
    return TaskFacts(kind, {}, available=40)


def test_comparisons_against_dense_and_static() -> None:
    data = {"arc": facts("choice"), "piqa": facts("choice"), "wiki": facts("perplexity")}
    methods = {
        "dense": method({"arc": [1] * 40, "piqa": [1] * 40}),
        "static": method({"arc": [1] * 20 + [0] * 20, "piqa": [1] * 40}),
        "ftp": method({"arc": [1] * 30 + [0] * 10, "piqa": [1] * 39 + [0]}),
    }
    for result in methods.values():
        result.tasks["wiki"] = TaskScores(ppl_scored=20.0)
    found = comparisons(methods, data, ["arc", "piqa"], ["dense", "static"])
    vs_dense, vs_static = found["dense"]["ftp"], found["static"]["ftp"]
    assert set(vs_dense) == {"arc", "piqa", HEADLINE_AVERAGE}  # perplexity tasks have no per-item pairs
    assert vs_dense["arc"].mean == pytest.approx(-0.25)
    assert not vs_dense["arc"].inside_noise
    assert vs_dense[HEADLINE_AVERAGE].mean == pytest.approx((-0.25 - 0.025) / 2)
    assert vs_static["arc"].mean == pytest.approx(0.25)
    assert vs_static["piqa"].inside_noise
    assert "dense" not in found["dense"]
    lines = "\n".join(comparison_lines(found))
    assert "Accuracy minus static" in lines
    assert "| ftp | +25.0 [" in lines
    assert describe(vs_static["piqa"], 100).endswith("(noise)")


def test_comparisons_skip_a_missing_static_baseline() -> None:
    methods = {"dense": method({"arc": [1, 0]}), "ftp": method({"arc": [1, 1]})}
    found = comparisons(methods, {"arc": facts("choice")}, ["arc"], ["dense", "static"])
    assert list(found) == ["dense"]


def test_heldout_rows_carry_window_errors_and_paired_differences() -> None:
    from ftp_deploy.fidelity import Fidelity
    from ftp_deploy.training.heldout import scores_from_totals

    def totals(window_kl: list[float]) -> Fidelity:
        return Fidelity(positions=len(window_kl), kl_sum=sum(window_kl), window_kl=window_kl)

    uniform = [0.05, 0.02, 0.09, 0.04]
    rows = scores_from_totals(
        {
            "static_uniform": totals(uniform),
            "static_searched": totals(list(uniform)),
            "trained": totals([kl - 0.01 for kl in uniform]),  # better by 0.01 on every window
        }
    )
    assert rows["static_uniform"].kl == pytest.approx(0.05)
    assert rows["static_uniform"].kl_stderr == pytest.approx(standard_error(uniform))
    assert set(rows["static_uniform"].kl_minus) == {"static_searched"}
    assert rows["static_searched"].kl_minus["static_uniform"].inside_noise
    better = rows["trained"].kl_minus["static_uniform"]
    assert better.mean == pytest.approx(-0.01) and better.high == pytest.approx(-0.01)
    assert not better.inside_noise


def test_fidelity_keeps_each_window_kl_and_their_mean_is_the_kl() -> None:
    import torch

    from ftp_deploy.fidelity import Fidelity, kl_to_dense, log_probs

    generator = torch.Generator().manual_seed(0)
    dense, routed = torch.randn(3, 5, 7, generator=generator), torch.randn(3, 5, 7, generator=generator)
    fidelity = Fidelity()
    fidelity.add(dense, routed, torch.zeros(3, 5, dtype=torch.long))
    assert len(fidelity.window_kl) == 3
    assert fidelity.summary().kl == pytest.approx(float(kl_to_dense(log_probs(dense), routed)), rel=1e-5)
    assert sum(fidelity.window_kl) / 3 == pytest.approx(fidelity.summary().kl, rel=1e-5)
    assert min(fidelity.window_kl) > 0 and len(set(fidelity.window_kl)) == 3
