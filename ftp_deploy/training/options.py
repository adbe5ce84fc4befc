"""train's options, declared once: the command's fields and defaults, flat as the command line has them.

Torch-free, so --help and a bad value need no PyTorch. `run_settings()` turns them into the
nested RunSettings that run.json records and a resumed run must match; the rest (resume, the
time budget, placement, processes) say how this invocation runs, not what the run is.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ftp_deploy.errors import ConfigError
from ftp_deploy.placement import DEFAULT_DEVICE, DEFAULT_DTYPE
from ftp_deploy.schedule import DEFAULT_S_MAX
from ftp_deploy.training.config import (
    RANK_TIMEOUT_S,
    DataConfig,
    LossWeights,
    SearchConfig,
    TrainConfig,
    default_source,
)
from ftp_deploy.training.settings import ATTENTION_PRIORS, FINETUNE_SEARCH, RunSettings

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_SPARSITY = 0.3  # FLOP-weighted mean token sparsity
_DATA = DataConfig()
_SEARCH = SearchConfig()
_TRAIN = TrainConfig()
_LOSSES = LossWeights()


@dataclass(frozen=True)
class TrainOptions:
    """What `ftp-deploy train --out RUN_DIR` does; each field is the option of the same name."""

    model: str = DEFAULT_MODEL
    data: str | None = None  # default: calibration_text under the data root when present, else self
    sparsity: float = DEFAULT_SPARSITY
    seq_len: int = _DATA.seq_len
    steps: int = _TRAIN.steps
    batch_size: int = _TRAIN.batch_size
    seed: int = RunSettings.seed
    resume: bool = False  # continue the interrupted run in the out folder (same options)
    time_budget: float | None = None  # minutes for the whole run; phases stop early to fit
    lr: float = _TRAIN.lr
    checkpoint_every: int = _TRAIN.checkpoint_every
    search_batch: int = _TRAIN.search_batch
    validation_batch: int = _TRAIN.validation_batch
    scored: int = _TRAIN.scored
    s_max: float = DEFAULT_S_MAX
    monotone: bool = RunSettings.monotone_schedules  # search only schedules that never fall from block to block
    routing: str = RunSettings.routing_mode
    attention_priors: tuple[float, ...] = ATTENTION_PRIORS
    ga_population: int = _SEARCH.population
    ga_generations: int = _SEARCH.generations
    ga_mutation_sigma: float = _SEARCH.mutation_sigma
    finetune_generations: int = FINETUNE_SEARCH.generations
    guide_weight: float = _LOSSES.guide
    guide_decay: float = _LOSSES.guide_decay
    sparsity_weight: float = _LOSSES.sparsity
    distill_weight: float = _LOSSES.distill
    trust_remote_code: bool = False
    device: str = DEFAULT_DEVICE
    dtype: str = DEFAULT_DTYPE
    device_map: str | None = None
    checkpoint_activations: bool = False  # recompute each block in the backward pass: less memory
    num_processes: int = 1  # as torchrun --standalone --nproc-per-node N would start
    rank_timeout: float = RANK_TIMEOUT_S  # seconds a process of a multi-process run waits for the others

    def __post_init__(self) -> None:
        if self.num_processes < 1:
            raise ConfigError(f"--num-processes must be at least 1, got {self.num_processes}")
        if self.rank_timeout < 1:
            raise ConfigError(f"--rank-timeout must be at least 1 second, got {self.rank_timeout:g}")
        self.run_settings()  # checks every setting of the run

    def run_settings(self) -> RunSettings:
        """The settings run.json records, nested by the part of training each one shapes."""
        return RunSettings(
            model=self.model,
            data=self.data or default_source(),
            sparsity=self.sparsity,
            seed=self.seed,
            s_max=self.s_max,
            monotone_schedules=self.monotone,
            routing_mode=self.routing,
            attention_priors=self.attention_priors,
            data_config=DataConfig(seq_len=self.seq_len),
            search=SearchConfig(
                population=self.ga_population, generations=self.ga_generations, mutation_sigma=self.ga_mutation_sigma
            ),
            finetune=replace(FINETUNE_SEARCH, generations=self.finetune_generations),
            train=TrainConfig(
                steps=self.steps,
                batch_size=self.batch_size,
                lr=self.lr,
                checkpoint_every=self.checkpoint_every,
                scored=self.scored,
                search_batch=self.search_batch,
                validation_batch=self.validation_batch,
            ),
            losses=LossWeights(
                guide=self.guide_weight,
                guide_decay=self.guide_decay,
                sparsity=self.sparsity_weight,
                distill=self.distill_weight,
            ),
        )
