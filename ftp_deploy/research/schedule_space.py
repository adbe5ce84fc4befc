"""A low-dimensional schedule space (a few knots across depth) and a CMA-ES search over it.

A 30-block genome with a few dozen evaluations cannot converge; a handful of knots can. The
knots are sparsities at evenly spaced depths, sorted (schedules must not decrease, see
search.ScheduleSpace), linearly interpolated over the routed blocks, and the result is repaired
to the FLOP-weighted target. The first and last `protect` blocks keep every token: they are the
blocks whose skipped tokens cost most (the embeddings' first transform and the output's last).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ftp_deploy.errors import ConfigError, missing_dependency
from ftp_deploy.plugins.token_compaction.contract import SPARSITY_DEN
from ftp_deploy.schedule import DEFAULT_S_MAX, Schedule
from ftp_deploy.training.search import Fitness, ScheduleSpace


class KnotSpace:
    """Schedules of `len(weights)` blocks given by `knots` sparsities; `protect` blocks at each end stay dense."""

    def __init__(
        self, target: float, weights: Sequence[float], knots: int = 4, protect: int = 1, s_max: float = DEFAULT_S_MAX
    ) -> None:
        blocks = len(weights)
        if knots < 1 or protect < 0 or blocks - 2 * protect < max(knots, 1):
            raise ConfigError(f"{knots} knots with {protect} protected blocks at each end do not fit {blocks} blocks")
        self.blocks, self.knots, self.protect = blocks, knots, protect
        all_weights = np.asarray(weights, dtype=np.float64)
        routed = all_weights[protect : blocks - protect]
        # The protected blocks skip nothing, so the routed ones carry the whole FLOP target.
        inner_target = target * float(all_weights.sum()) / float(routed.sum())
        if inner_target > s_max:
            raise ConfigError(
                f"sparsity {target:g} with {protect} dense block(s) at each end needs {inner_target:.3f} "
                f"in the others, above s_max {s_max:g}"
            )
        self.inner = ScheduleSpace(inner_target, routed.tolist(), s_max, monotone=True)
        self.s_max = s_max
        self.start = np.full(knots, inner_target)  # the flat schedule over the routed blocks

    def genome(self, x: np.ndarray) -> np.ndarray:
        """Thousandths of every block for knot values `x` (sparsity units)."""
        routed = self.blocks - 2 * self.protect
        depth = np.linspace(0.0, 1.0, routed)
        at = np.linspace(0.0, 1.0, self.knots) if self.knots > 1 else np.zeros(1)
        values = np.interp(depth, at, np.sort(np.asarray(x, dtype=np.float64))) * SPARSITY_DEN
        inner = self.inner.repair(values)
        return np.concatenate([np.zeros(self.protect, np.int64), inner, np.zeros(self.protect, np.int64)])

    def schedule(self, x: np.ndarray) -> Schedule:
        return Schedule(tuple(int(n) for n in self.genome(x)), self.s_max)


@dataclass
class KnotSearchResult:
    best: Schedule
    best_fitness: float
    start_fitness: float
    best_knots: list[float]
    evaluations: int = 0
    stopped_early: bool = False
    curve: list[list[float]] = field(default_factory=list)  # [evaluations so far, best fitness so far]

    def to_json(self) -> dict[str, Any]:
        return {
            "best_thousandths": list(self.best.thousandths),
            "best_fitness": self.best_fitness,
            "start_fitness": self.start_fitness,
            "best_knots": self.best_knots,
            "evaluations": self.evaluations,
            "stopped_early": self.stopped_early,
            "curve": self.curve,
        }


def cma_search(
    fitness: Fitness,
    space: KnotSpace,
    evaluations: int,
    sigma: float = 0.05,
    population: int = 6,
    seed: int = 0,
    should_stop: Callable[[], bool] = lambda: False,
) -> KnotSearchResult:
    """CMA-ES (the `cmaes` package) over the knots from the flat schedule; `evaluations` bounds the fitness calls.

    Schedules are cached: knot vectors that repair to the same thousandths are scored once.
    """
    try:
        from cmaes import CMA
    except ImportError as err:
        raise missing_dependency("cmaes", "research") from err

    bounds = np.tile([0.0, space.s_max], (space.knots, 1))
    optimizer = CMA(mean=space.start.copy(), sigma=sigma, bounds=bounds, seed=seed, population_size=population)
    cache: dict[tuple[int, ...], float] = {}
    start = space.schedule(space.start)
    result = KnotSearchResult(start, float("inf"), float("nan"), space.start.tolist())

    def score(x: np.ndarray) -> float:
        schedule = space.schedule(x)
        if schedule.thousandths not in cache:
            cache[schedule.thousandths] = fitness(schedule)
            result.evaluations += 1
            if cache[schedule.thousandths] < result.best_fitness:
                result.best, result.best_fitness = schedule, cache[schedule.thousandths]
                result.best_knots = np.sort(x).tolist()
            result.curve.append([result.evaluations, result.best_fitness])
        return cache[schedule.thousandths]

    result.start_fitness = score(space.start)
    while result.evaluations < evaluations:
        if should_stop():
            result.stopped_early = True
            break
        told = []
        for _ in range(optimizer.population_size):
            x = optimizer.ask()
            told.append((x, score(x)))
        optimizer.tell(told)
        if optimizer.should_stop():
            break
    return result
