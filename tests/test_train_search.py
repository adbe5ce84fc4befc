"""The genetic schedule search (FTP_SPEC section 5) on planted fitness functions."""

from __future__ import annotations

import numpy as np
import pytest

from ftp_deploy.errors import ConfigError
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.search import ScheduleSpace, SearchConfig, genetic_search

pytestmark = pytest.mark.usefixtures("single_thread")

OPTIMUM = np.array([0.1, 0.2, 0.5, 0.3, 0.4, 0.2, 0.35, 0.35])  # mean 0.3


def planted(schedule: Schedule) -> float:
    return float(((np.array(schedule.sparsities) - OPTIMUM) ** 2).sum())


@pytest.mark.parametrize("monotone", [True, False])
@pytest.mark.parametrize("weights", [[1.0] * 8, [1.0, 2.0, 3.0, 1.0, 1.0, 1.0, 5.0, 1.0]])
def test_every_genome_is_within_bounds_and_at_the_target_mean(weights: list[float], monotone: bool) -> None:
    seen: list[Schedule] = []

    def fitness(schedule: Schedule) -> float:
        seen.append(schedule)
        return planted(schedule)

    space = ScheduleSpace(0.3, weights, s_max=0.6, monotone=monotone)
    config = SearchConfig(population=12, generations=6, mutation_sigma=0.3, init_sigma=0.4)
    genetic_search(fitness, space, Schedule.uniform(0.3, 8, s_max=0.6), config, seed=1)
    assert len(seen) > 30
    # With equal weights the mean is exact; otherwise within one thousandth of the heaviest block.
    tolerance = 1e-9 if len(set(weights)) == 1 else 1e-3 * max(weights) / sum(weights)
    for schedule in seen:
        assert all(0 <= s <= 0.6 for s in schedule.sparsities)
        assert abs(schedule.mean(weights) - 0.3) <= tolerance
        if monotone:
            assert list(schedule.thousandths) == sorted(schedule.thousandths)
    # The wide mutations did push genes against both bounds, so the bounds were exercised.
    assert any(0.0 in s.sparsities for s in seen) and any(0.6 in s.sparsities for s in seen)


def test_same_seed_same_schedule_and_another_seed_differs() -> None:
    space = ScheduleSpace(0.3, [1.0] * 8, monotone=False)
    config = SearchConfig(population=8, generations=4)
    start = Schedule.uniform(0.3, 8)
    first = genetic_search(planted, space, start, config, seed=7)
    again = genetic_search(planted, space, start, config, seed=7)
    other = genetic_search(planted, space, start, config, seed=8)
    assert first.best == again.best and first.history == again.history
    assert other.history != first.history


@pytest.mark.parametrize("monotone", [False, True])
def test_search_finds_a_planted_optimum(monotone: bool) -> None:
    optimum = np.sort(OPTIMUM) if monotone else OPTIMUM

    def planted_here(schedule: Schedule) -> float:
        return float(((np.array(schedule.sparsities) - optimum) ** 2).sum())

    space = ScheduleSpace(0.3, [1.0] * 8, monotone=monotone)
    config = SearchConfig(population=16, generations=40, mutation_sigma=0.05, init_sigma=0.1)
    result = genetic_search(planted_here, space, Schedule.uniform(0.3, 8), config, 0)
    assert np.abs(np.array(result.best.sparsities) - optimum).max() <= 0.03
    assert result.best_fitness < 0.01 * result.start_fitness
    bests = [g.best for g in result.history]
    assert bests == sorted(bests, reverse=True)  # elitism: the best never gets worse


def test_the_start_schedule_is_evaluated_and_never_beaten_by_a_worse_result() -> None:
    space = ScheduleSpace(0.3, [1.0] * 8, monotone=False)
    start = Schedule.from_sparsities(OPTIMUM.tolist())
    result = genetic_search(planted, space, start, SearchConfig(population=6, generations=3), 0)
    assert result.start_fitness == 0.0 and result.best == start


def test_should_stop_ends_the_search_with_the_best_so_far() -> None:
    space = ScheduleSpace(0.3, [1.0] * 8)
    calls = []

    def fitness(schedule: Schedule) -> float:
        calls.append(schedule)
        return planted(schedule)

    result = genetic_search(
        fitness, space, Schedule.uniform(0.3, 8), SearchConfig(), 0, should_stop=lambda: len(calls) >= 5
    )
    assert result.stopped_early and result.evaluations == 5 == len(calls)
    assert result.best_fitness == min(planted(s) for s in calls)


@pytest.mark.parametrize("monotone", [True, False])
def test_repair_reaches_the_mean_from_anywhere(monotone: bool) -> None:
    space = ScheduleSpace(0.45, [1.0] * 30, monotone=monotone)
    rng = np.random.default_rng(0)
    for _ in range(50):
        genome = space.repair(rng.normal(300, 600, 30))
        assert genome.min() >= 0 and genome.max() <= 900 and genome.sum() == 450 * 30
        assert not monotone or bool((np.diff(genome) >= 0).all())


@pytest.mark.parametrize("monotone", [True, False])
def test_repair_keeps_a_schedule_that_already_fits(monotone: bool) -> None:
    # FLOP weights of a 30-block model are ~1.9e9 each: the case where rounding once moved mass.
    space = ScheduleSpace(0.3, [1.887731712e9] * 30, monotone=monotone)
    rng = np.random.default_rng(1)
    for _ in range(20):
        genome = space.repair(rng.normal(300, 80, 30))
        assert np.array_equal(space.repair(genome.astype(np.float64)), genome)


def test_bad_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="outside"):
        ScheduleSpace(0.95, [1.0] * 4)
    with pytest.raises(ConfigError, match="population"):
        SearchConfig(population=1)
    with pytest.raises(ConfigError, match="elites"):
        SearchConfig(population=4, elites=4)
