"""ftp_config.json: what a routed model is besides its router's weights (router.safetensors beside it).

The base model it was made for (a fingerprint of its architecture), the per-block schedule, the
router's architecture, the routing mode, what training produced it, and the sha256 of the router
file. Torch-free: `ftp_deploy.artifacts` turns it into a RoutedModel and back.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from ftp_deploy.formats.record import Document
from ftp_deploy.schedule import check_sink_fraction

CONFIG_FILE = "ftp_config.json"
ROUTER_FILE = "router.safetensors"
FACTOR_NAMES = ("position", "attention_score", "attention_rank", "required_sparsity")


@dataclass(frozen=True)
class ModelRef:
    """Where a base model came from and the fingerprint of its architecture."""

    ref: str
    model_type: str
    num_layers: int
    hidden_size: int
    config_hash: str


@dataclass(frozen=True)
class RouterSpec:
    """What decides the keep scores: a learned MLP, the static priority, or random scores."""

    kind: str = "learned"
    hidden: int = 64
    attention_window: int = 32
    seed: int = 0
    # Fraction of the leading tokens kept in every block as attention sinks, whatever the scores
    # (routing.forced_keep_mask); 0 keeps only x_0, as FTP_SPEC section 4's static order.
    sink_fraction: float = 0.0

    def __post_init__(self) -> None:
        check_sink_fraction(self.sink_fraction)


@dataclass(frozen=True)
class RouterRecord(RouterSpec):
    """The router as ftp_config.json and manifest.json describe it: its spec, its inputs, its size."""

    inputs: tuple[str, ...] = FACTOR_NAMES
    parameters: int = 0

    @property
    def spec(self) -> RouterSpec:
        return RouterSpec(**{f.name: getattr(self, f.name) for f in fields(RouterSpec)})


@dataclass(frozen=True)
class ScheduleRecord:
    sparsity_thousandths: tuple[int, ...]
    sparsities: tuple[float, ...]
    s_max: float
    mean_sparsity: float


@dataclass(frozen=True)
class TrainingRecord:
    """What `ftp-deploy train` did to produce the router (run.json has the whole story)."""

    ftp_deploy_version: str
    data: str
    data_fingerprint: str
    seq_len: int
    seed: int
    target_sparsity: float
    steps: int  # router steps trained
    router_from_step: int  # the step whose weights were kept (the best validation check)
    prior_attention_weight: float
    routing_mode: str
    steps_planned: int
    stopped_by_time_budget: bool
    search_kl: float
    uniform_kl: float
    finetune_kl: float
    heldout_kl: float
    heldout_static_searched_kl: float
    train_seconds: float
    settings: dict[str, Any]  # the run's settings as run.json holds them (training.settings.RunSettings)


@dataclass(frozen=True)
class RoutedConfig(Document):
    FILE: ClassVar[str] = CONFIG_FILE
    FORMAT: ClassVar[str] = "ftp-deploy/routed-model"
    VERSION: ClassVar[int] = 1
    DESCRIPTION: ClassVar[str] = "routed-model config"

    base_model: ModelRef
    schedule: ScheduleRecord
    router: RouterRecord
    routing_mode: str
    # None for a model saved without training (a static router, a test); written as null
    training: TrainingRecord | None = None
    factors: dict[str, str] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)  # file name -> sha256 (the router's)

    @classmethod
    def upgrade(cls, data: dict[str, Any]) -> dict[str, Any]:
        # Before TrainingRecord, a model saved without training held {} there.
        return {**data, "training": data.get("training") or None}
