"""The knot schedule space and the CMA-ES search over it, on a synthetic fitness with a known optimum."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from ftp_deploy.errors import ConfigError
from ftp_deploy.research.schedule_space import KnotSpace, cma_search
from ftp_deploy.schedule import Schedule

WEIGHTS = [1.0] * 12


def weighted_mean(schedule: Schedule) -> float:
    return float(np.dot(WEIGHTS, schedule.sparsities) / sum(WEIGHTS))


def test_knots_give_monotone_schedules_at_the_target_with_dense_ends() -> None:
    space = KnotSpace(0.3, WEIGHTS, knots=3, protect=1)
    for x in (space.start, np.array([0.5, 0.1, 0.3]), np.array([0.0, 0.0, 0.9])):
        schedule = space.schedule(x)
        assert schedule.thousandths[0] == schedule.thousandths[-1] == 0
        inner = schedule.thousandths[1:-1]
        assert list(inner) == sorted(inner)
        assert weighted_mean(schedule) == pytest.approx(0.3, abs=1e-3)
    flat = space.schedule(space.start).thousandths[1:-1]
    assert max(flat) - min(flat) <= 1


def test_a_target_the_routed_blocks_cannot_carry_is_refused() -> None:
    with pytest.raises(ConfigError, match="above s_max"):
        KnotSpace(0.8, WEIGHTS, knots=3, protect=2)
    with pytest.raises(ConfigError, match="do not fit"):
        KnotSpace(0.3, WEIGHTS[:4], knots=3, protect=1)


def test_cma_search_finds_a_ramp_and_keeps_to_its_budget() -> None:
    space = KnotSpace(0.3, WEIGHTS, knots=3, protect=1)
    goal = np.array(space.schedule(np.array([0.1, 0.35, 0.45])).sparsities)

    def fitness(schedule: Schedule) -> float:
        return float(np.square(np.array(schedule.sparsities) - goal).sum())

    result = cma_search(fitness, space, evaluations=120, sigma=0.1, population=6, seed=0)
    assert result.evaluations <= 120 + 6
    assert result.best_fitness < 0.05 * result.start_fitness
    assert [e for e, _ in result.curve] == list(range(1, result.evaluations + 1))
    assert all(a >= b for (_, a), (_, b) in zip(result.curve, result.curve[1:], strict=False))
    stopped = cma_search(fitness, space, evaluations=120, should_stop=lambda: True)
    assert stopped.stopped_early and stopped.evaluations == 1


def test_without_cmaes_the_search_names_the_research_extra() -> None:
    """cmaes is the [research] extra's, not a requirement: a plain install imports everything else."""
    code = (
        "import sys; sys.modules['cmaes'] = None\n"
        "from ftp_deploy.research.schedule_space import KnotSpace, cma_search\n"
        "space = KnotSpace(0.3, [1.0] * 12, knots=3)\n"
        "try:\n"
        "    cma_search(lambda schedule: 0.0, space, evaluations=4)\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert result.stdout.startswith("OptionalDependencyError cmaes is not installed")
    assert "pip install 'ftp-deploy[research]'" in result.stdout
