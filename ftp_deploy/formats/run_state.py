"""run.json: a training run's settings and progress, phase by phase, then its held-out scores.

Written after every phase and checkpoint (training/runfolder), so a resumed run reads back exactly
where it stood. `settings` holds training.settings.RunSettings as JSON: the training stage reads it
typed (`from_json(RunSettings, ...)`), and a resumed run compares it with its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from ftp_deploy.formats.measures import Difference, FidelitySummary
from ftp_deploy.formats.record import Document
from ftp_deploy.formats.routed_config import ModelRef
from ftp_deploy.placement import Placement

RUN_FILE = "run.json"
# Beside it, a log rather than a document: one JSON object per training step, read back by RunFolder.
METRICS_FILE = "metrics.jsonl"


@dataclass
class DataRecord:
    """The blocks a run trained on: `train_blocks` include the last `validation_blocks`, which check the
    choices and are never trained on; `heldout_blocks` score the result."""

    source: str
    fingerprint: str
    train_blocks: int
    heldout_blocks: int
    seq_len: int
    validation_blocks: int | None = None  # runs written before it was recorded lack it


@dataclass
class SearchGeneration:
    """One generation of a schedule search: its best and mean fitness, the best schedule so far."""

    index: int
    best: float
    mean: float
    best_thousandths: list[int]


@dataclass
class Validated:
    """The validation KL of a search's start and of the schedule it found (the found one is kept only if lower)."""

    start: float
    found: float


@dataclass
class SearchPhase:
    best_thousandths: tuple[int, ...]
    best_fitness: float
    start_fitness: float
    evaluations: int
    stopped_early: bool
    history: list[SearchGeneration]
    validation: Validated | None = None  # None when the search found nothing but its start
    seconds: float = 0.0


@dataclass
class PriorPhase:
    """The router's starting point: each attention weight scored (validation KL), and the one chosen."""

    candidates: list[tuple[float, float]]
    attention_weight: float
    seconds: float


@dataclass
class Checkpoint:
    step: int
    file: str
    sha256: str = ""  # empty on the ranks that do not write


@dataclass
class TrainPhase:
    seconds: float = 0.0
    validation: list[tuple[int, float]] = field(default_factory=list)  # (step, validation KL) of each check
    checkpoint: Checkpoint | None = None
    done: bool = False
    stopped_by_time_budget: bool = False
    best_step: int = 0


@dataclass
class Phases:
    search: SearchPhase | None = None
    prior: PriorPhase | None = None
    train: TrainPhase | None = None
    finetune: SearchPhase | None = None


@dataclass
class HeldoutRow(FidelitySummary):
    """One routing's fidelity to dense on the held-out blocks, with its paired differences to the baselines."""

    kl_stderr: float
    window_kl: list[float]
    kl_minus: dict[str, Difference] = field(default_factory=dict)


@dataclass
class RunState(Document):
    FILE: ClassVar[str] = RUN_FILE
    FORMAT: ClassVar[str] = "ftp-deploy/train-run"
    VERSION: ClassVar[int] = 1
    DESCRIPTION: ClassVar[str] = "training run"

    settings: dict[str, Any] = field(default_factory=dict)
    model: ModelRef | None = None
    data: DataRecord | None = None
    placement: Placement | None = None  # of the last invocation: a run may resume on other hardware
    processes: int = 1  # of the last invocation: the process group it joined
    phases: Phases = field(default_factory=Phases)
    heldout: dict[str, HeldoutRow] | None = None
    finished: bool = False
