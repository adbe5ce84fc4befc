"""results.json: every number of one `ftp-deploy eval`: the model and data it ran on, each method's
scores per task, the retention figures of FTP_SPEC section 8, and each method's paired differences
to dense and to the static router.

Task scores hold the fields of their kind: multiple choice (acc, acc_norm, per-item correctness),
a target task (LAMBADA: acc and ppl) or perplexity windows (ppl_scored over the scored positions).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from ftp_deploy.formats.measures import Difference
from ftp_deploy.formats.record import Document
from ftp_deploy.formats.routed_config import ModelRef, TrainingRecord
from ftp_deploy.placement import Placement

RESULTS_FILE = "results.json"
# The key of the average over the headline tasks among each method's differences.
HEADLINE_AVERAGE = "headline_average"


@dataclass
class Compute:
    """What a model really computed: the fraction of (token, block) pairs skipped, and its block FLOPs
    over dense's on the same sequences (evaluation/tally)."""

    token_sparsity: float
    flop_ratio: float


@dataclass
class TaskScores:
    measured: Compute | None = None
    # multiple choice and target tasks
    items: int | None = None
    acc: float | None = None
    acc_stderr: float | None = None
    correct: list[int] | None = None  # per item: paired comparisons rest on it
    # multiple choice
    acc_norm: float | None = None
    acc_norm_stderr: float | None = None
    predictions: list[int] | None = None
    predictions_norm: list[int] | None = None
    # target tasks
    ppl: float | None = None
    # perplexity windows: the scored positions (FTP_SPEC 1b), and all positions
    ppl_scored: float | None = None
    ppl_all: float | None = None
    scored_tokens: int | None = None
    all_tokens: int | None = None


@dataclass
class MethodResult:
    """A model scored: how it was made (schedule, router, removed layers), what it computed, its scores."""

    description: str
    measured: Compute
    tasks: dict[str, TaskScores]
    router: str | None = None
    schedule_thousandths: list[int] | None = None
    schedule_sparsity: float | None = None
    flop_ratio_at_seq_len: float | None = None
    removed_layers: list[int] | None = None  # ShortGPT
    block_influence: list[float] | None = None
    calibration_tokens: int | None = None


@dataclass
class TaskFacts:
    """What was evaluated of one task: its kind, the files (sha256), how many items or windows of how many."""

    kind: str  # "choice", "target" or "perplexity"
    files: dict[str, str]
    available: int
    items: int | None = None
    windows: int | None = None
    chance: float | None = None  # multiple choice


@dataclass
class ChanceNormalized:
    average: float | None
    per_task: dict[str, float]


@dataclass
class Retention:
    """Retention = method accuracy / dense accuracy, averaged over the headline tasks (dense at least
    `min_margin_over_chance` above chance); the others are listed with the reason."""

    metric: str
    min_margin_over_chance: float
    headline_tasks: list[str]
    other_tasks: dict[str, str]
    average: dict[str, float | None] = field(default_factory=dict)
    per_task: dict[str, dict[str, float | None]] = field(default_factory=dict)
    chance_normalized: dict[str, ChanceNormalized] = field(default_factory=dict)
    average_accuracy: dict[str, float | None] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluatedModel(ModelRef):
    weights_sha256: str = ""


@dataclass
class Settings:
    seq_len: int
    scored_tokens: int
    batch_tokens: int
    subset_seed: int
    execution: str
    limit: int | None = None
    placement: Placement | None = None


@dataclass
class SourceRun:
    """The run folder evaluated: its router file's sha256 and how it was trained."""

    dir: str
    router_sha256: str
    routing_mode: str
    training: TrainingRecord | None = None


@dataclass
class EvalResults(Document):
    FILE: ClassVar[str] = RESULTS_FILE
    FORMAT: ClassVar[str] = "ftp-deploy/eval-results"
    VERSION: ClassVar[int] = 1
    DESCRIPTION: ClassVar[str] = "eval results"

    model: EvaluatedModel
    settings: Settings
    data: dict[str, TaskFacts]
    methods: dict[str, MethodResult]
    retention: dict[str, float | None]  # the headline average of each method (retention_details.average)
    retention_details: Retention
    # {reference: {method: {task or HEADLINE_AVERAGE: method minus reference}}}
    comparisons: dict[str, dict[str, dict[str, Difference]]]
    wall_seconds: float
    run: SourceRun | None = None
