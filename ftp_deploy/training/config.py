"""The plain settings of a training run: data source and blocks, schedule search, router training, losses.

Torch-free, so the command line can show their defaults without loading PyTorch; the modules
that use them (data, search, trainer, losses) import them from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftp_deploy.data_root import data_file
from ftp_deploy.errors import ConfigError
from ftp_deploy.scored import SCORED_POSITIONS

SELF_SOURCE = "self"
CALIBRATION_TEXT = "calibration_text"  # under the data root
RANK_TIMEOUT_S = 600.0  # how long a process of a multi-process run waits for the others


def default_source() -> str:
    """The `--data` default: calibration_text under the data root when present, else the model's own samples."""
    text = data_file(CALIBRATION_TEXT)
    return str(text) if text.is_dir() else SELF_SOURCE


@dataclass(frozen=True)
class DataConfig:
    """How text becomes blocks. `self_samples` is the number of blocks `--data self` samples."""

    seq_len: int = 256
    heldout_fraction: float = 0.1
    max_heldout: int = 8
    self_samples: int = 32

    def __post_init__(self) -> None:
        if self.seq_len < 8:
            raise ConfigError(f"seq_len must be at least 8, got {self.seq_len}")
        if not 0 < self.heldout_fraction < 1 or self.max_heldout < 1 or self.self_samples < 2:
            raise ConfigError("heldout_fraction must be in (0, 1), max_heldout >= 1 and self_samples >= 2")


@dataclass(frozen=True)
class SearchConfig:
    """Settings of one genetic search. Sigmas are in sparsity units (0.05 = 5 points)."""

    population: int = 10
    generations: int = 6  # populations evaluated, the initial one included
    tournament: int = 3
    crossover_rate: float = 0.9  # uniform crossover; otherwise the child copies one parent
    mutation_rate: float = 0.3  # chance that each gene gets Gaussian noise
    mutation_sigma: float = 0.02
    init_sigma: float = 0.03  # spread of the initial population around the start schedule
    elites: int = 2  # best genomes carried over unchanged

    def __post_init__(self) -> None:
        if self.population < 2 or self.generations < 1:
            raise ConfigError("a search needs a population of at least 2 and at least 1 generation")
        if not 1 <= self.elites < self.population or not 1 <= self.tournament <= self.population:
            raise ConfigError("elites must be in [1, population) and tournament in [1, population]")


@dataclass(frozen=True)
class TrainConfig:
    """Router training. `search_batch` blocks form the fixed calibration batch, the searches'
    fitness; `validation_batch` other blocks check, every `eval_every` steps, which router weights
    to keep, and which prior and searched schedules."""

    steps: int = 60
    batch_size: int = 2
    lr: float = 5e-3
    weight_decay: float = 0.0
    checkpoint_every: int = 10
    scored: int = SCORED_POSITIONS
    search_batch: int = 8
    eval_every: int = 10  # steps between validation checks; the best router is the one kept
    # Blocks held out of training and of the searches' batch: the checks that decide which router
    # weights, prior and schedules are kept, so a choice is never scored on what it was fitted to.
    validation_batch: int = 16

    def __post_init__(self) -> None:
        sizes = (self.steps, self.batch_size, self.checkpoint_every, self.scored, self.search_batch, self.eval_every)
        if min(*sizes, self.validation_batch) < 1:
            raise ConfigError(
                "steps, batch_size, checkpoint_every, scored, search_batch, eval_every and validation_batch "
                "must be >= 1"
            )
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("lr must be > 0 and weight_decay >= 0")


@dataclass(frozen=True)
class LossWeights:
    """`L = w_g(step) * guide + sparsity * L_sparsity + distill * L_distill`.

    The guide weight starts at `guide` and falls linearly to 0 at `guide_decay` of the
    training steps: early on it pulls the router onto the static routing the schedule was
    searched with; later only the distillation and sparsity terms shape it.
    """

    guide: float = 1.0
    guide_decay: float = 0.5
    sparsity: float = 1.0
    distill: float = 1.0

    def __post_init__(self) -> None:
        if min(self.guide, self.sparsity, self.distill) < 0 or not 0 < self.guide_decay <= 1:
            raise ConfigError("loss weights must be >= 0 and guide_decay in (0, 1]")

    def guide_weight(self, step: int, total_steps: int) -> float:
        """Weight of the guide loss at `step` (0-based): `guide` at step 0, 0 from the decay end on."""
        decay_steps = max(1, round(self.guide_decay * total_steps))
        return self.guide * max(0.0, 1.0 - step / decay_steps)
