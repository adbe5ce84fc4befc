"""Genetic search over per-block sparsity schedules (FTP_SPEC section 5).

Genomes are schedules in integer thousandths, the unit every implementation shares, so a
genome is exactly the schedule that gets evaluated and saved. Every genome is repaired to
lie in `[0, s_max]` with its FLOP-weighted mean at the target sparsity.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from ftp_deploy.formats.run_state import SearchGeneration, SearchPhase, Validated
from ftp_deploy.plugins.token_compaction.contract import SPARSITY_DEN
from ftp_deploy.schedule import DEFAULT_S_MAX, Schedule, check_sparsity
from ftp_deploy.training.config import SearchConfig
from ftp_deploy.training.ranks import ONE_PROCESS, Ranks

Fitness = Callable[[Schedule], float]


@dataclass
class SearchResult:
    best: Schedule
    best_fitness: float
    start_fitness: float
    history: list[SearchGeneration] = field(default_factory=list)
    evaluations: int = 0
    stopped_early: bool = False
    # KL of the start and of the schedule found on blocks the search did not see; None if not checked.
    validation: Validated | None = None

    def phase(self, seconds: float) -> SearchPhase:
        """As run.json records it."""
        return SearchPhase(
            best_thousandths=self.best.thousandths,
            best_fitness=self.best_fitness,
            start_fitness=self.start_fitness,
            evaluations=self.evaluations,
            stopped_early=self.stopped_early,
            history=list(self.history),
            validation=self.validation,
            seconds=seconds,
        )

    @classmethod
    def from_phase(cls, phase: SearchPhase, s_max: float) -> SearchResult:
        return cls(
            best=Schedule(phase.best_thousandths, s_max),
            best_fitness=phase.best_fitness,
            start_fitness=phase.start_fitness,
            history=list(phase.history),
            evaluations=phase.evaluations,
            stopped_early=phase.stopped_early,
            validation=phase.validation,
        )


class ScheduleSpace:
    """Schedules of `len(weights)` blocks in [0, s_max] whose weighted mean is `target`.

    `monotone` keeps every schedule non-decreasing from the first block to the last. A block
    that skips fewer tokens than the one before re-admits tokens whose hidden state stopped
    updating blocks ago, and those stale keys and values wreck the output: on SmolLM2-135M
    (static router, mean 0.3, 256-token blocks, last 64 predictions) a linear ramp 0.45 -> 0.15
    gives KL 6.0 and alternating 0.2/0.4 gives 0.24, against 0.034 for uniform and 0.046 for
    the ramp 0.15 -> 0.45. Without the constraint almost every random genome is of that kind.
    """

    def __init__(
        self, target: float, weights: Sequence[float], s_max: float = DEFAULT_S_MAX, monotone: bool = True
    ) -> None:
        check_sparsity(target, s_max)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.s_max = s_max
        self.monotone = monotone
        self.limit = round(s_max * SPARSITY_DEN)
        self.target_total = target * SPARSITY_DEN * float(self.weights.sum())

    def schedule(self, genome: np.ndarray) -> Schedule:
        return Schedule(tuple(int(n) for n in genome), self.s_max)

    def repair(self, genes: np.ndarray) -> np.ndarray:
        """Integer thousandths in [0, limit] closest to `genes` (sorted, if monotone) plus one common offset."""
        x = np.clip(np.sort(genes) if self.monotone else genes, 0, self.limit)
        low, high = -float(self.limit), float(self.limit)
        for _ in range(64):  # bisection on the offset: the weighted sum is monotone in it
            mid = (low + high) / 2
            if self._total(np.clip(x + mid, 0, self.limit)) < self.target_total:
                low = mid
            else:
                high = mid
        shifted = np.clip(x + high, 0, self.limit)
        # The offset found can sit a rounding error below an integer genome's own values; the
        # slack keeps a genome that already fits exactly what it is.
        genome = np.floor(shifted + 1e-6).astype(np.int64)
        # Rounding down leaves a deficit: give thousandths back to the blocks rounded down most,
        # or, to stay non-decreasing, from the last block backwards where the order allows.
        order = range(len(genome) - 1, -1, -1) if self.monotone else np.argsort(genome - shifted, kind="stable")
        for block in order:
            residual = self.target_total - self._total(genome)
            room = genome[block] < (genome[block + 1] if self.monotone and block + 1 < len(genome) else self.limit + 1)
            if room and genome[block] < self.limit and abs(residual - self.weights[block]) < abs(residual):
                genome[block] += 1
        return genome

    def _total(self, genome: np.ndarray) -> float:
        return float((self.weights * genome).sum())


class _Stop(Exception):
    """Raised inside the search when `should_stop` says stop."""


def genetic_search(
    fitness: Fitness,
    space: ScheduleSpace,
    start: Schedule,
    config: SearchConfig,
    seed: int,
    should_stop: Callable[[], bool] = lambda: False,
    on_generation: Callable[[SearchGeneration], None] = lambda g: None,
    ranks: Ranks = ONE_PROCESS,
) -> SearchResult:
    """Minimize `fitness` over `space`; the start schedule is always in the first population.

    Fitness values are cached per genome, so elites are never re-evaluated. A generation's new
    genomes are scored in rounds of one genome per rank (`ranks.map`); every rank gets every
    value and so breeds the same next generation. `should_stop` is asked before each round
    after the start's (with several ranks it must answer alike on all of them); once it
    answers True the best genome so far is returned.
    """
    rng = np.random.default_rng(seed)
    base = np.asarray(start.thousandths, dtype=np.float64)
    spread = config.init_sigma * SPARSITY_DEN
    population = [space.repair(base)]
    population += [space.repair(base + rng.normal(0, spread, base.shape)) for _ in range(config.population - 1)]
    cache: dict[tuple[int, ...], float] = {}
    result = SearchResult(best=space.schedule(population[0]), best_fitness=float("inf"), start_fitness=float("nan"))

    def score(genomes: list[np.ndarray], may_stop: bool = True) -> list[float]:
        keys = [tuple(int(n) for n in genome) for genome in genomes]
        fresh = [key for key in dict.fromkeys(keys) if key not in cache]
        for first in range(0, len(fresh), ranks.world):
            if may_stop and should_stop():
                raise _Stop
            batch = fresh[first : first + ranks.world]
            values = ranks.map(fitness, [space.schedule(np.asarray(key)) for key in batch])
            for key, value in zip(batch, values, strict=True):
                cache[key] = value
                result.evaluations += 1
                if value < result.best_fitness:
                    result.best, result.best_fitness = space.schedule(np.asarray(key)), value
        return [cache[key] for key in keys]

    # The start is always scored, so even a search stopped at once returns a measured schedule.
    result.start_fitness = score(population[:1], may_stop=False)[0]
    scores: list[float] = []
    try:
        for index in range(config.generations):
            if index:
                population = _breed(population, scores, space, config, rng)
            scores = score(population)
            generation = SearchGeneration(index, min(scores), float(np.mean(scores)), list(result.best.thousandths))
            result.history.append(generation)
            on_generation(generation)
    except _Stop:
        result.stopped_early = True
    return result


def _breed(
    population: list[np.ndarray],
    scores: list[float],
    space: ScheduleSpace,
    config: SearchConfig,
    rng: np.random.Generator,
) -> list[np.ndarray]:
    order = sorted(range(len(population)), key=lambda i: scores[i])
    children = [population[i] for i in order[: config.elites]]
    sigma = config.mutation_sigma * SPARSITY_DEN
    while len(children) < config.population:
        first = population[_tournament(scores, config.tournament, rng)]
        second = population[_tournament(scores, config.tournament, rng)]
        child = first.astype(np.float64)
        if rng.random() < config.crossover_rate:
            child = np.where(rng.random(child.shape) < 0.5, first, second).astype(np.float64)
        mutate = rng.random(child.shape) < config.mutation_rate
        child = child + mutate * rng.normal(0, sigma, child.shape)
        children.append(space.repair(child))
    return children


def _tournament(scores: list[float], size: int, rng: np.random.Generator) -> int:
    entrants = rng.choice(len(scores), size=size, replace=False)
    return int(min(entrants, key=lambda i: scores[i]))
