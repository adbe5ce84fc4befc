"""Every setting of a training run, saved in run.json; a resumed run must match them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ftp_deploy.errors import ConfigError
from ftp_deploy.formats.record import to_json
from ftp_deploy.schedule import DEFAULT_S_MAX, check_sink_fraction, check_sparsity
from ftp_deploy.training.config import DataConfig, LossWeights, SearchConfig, TrainConfig

# The fine-tune search starts at the trained schedule and moves in smaller steps.
FINETUNE_SEARCH = SearchConfig(population=8, generations=3, mutation_sigma=0.01, init_sigma=0.015)
TRAINABLE_ROUTING = ("monotone", "topk")
# Attention-score weights of the router's starting point that training scores on its validation
# blocks (trainer.new_router); 0 is the static order. They matter under monotone routing only: under
# top-k a token the attention score ranks out of one block can come back stale in a later one.
ATTENTION_PRIORS = (0.0, 8.0, 32.0, 128.0)


@dataclass(frozen=True)
class RunSettings:
    """`data` is the resolved source: a path, a hub dataset name, or `self`."""

    model: str
    data: str
    sparsity: float
    seed: int = 0
    s_max: float = DEFAULT_S_MAX
    monotone_schedules: bool = True  # see ScheduleSpace: decreasing steps re-admit stale tokens
    sink_fraction: float = 0.0  # leading tokens every block keeps (RouterSpec.sink_fraction)
    routing_mode: str = "monotone"  # of the trained router: a token skipped once stays skipped
    attention_priors: tuple[float, ...] = ATTENTION_PRIORS
    data_config: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: SearchConfig = FINETUNE_SEARCH
    train: TrainConfig = field(default_factory=TrainConfig)
    losses: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity, self.s_max)
        check_sink_fraction(self.sink_fraction)
        if self.routing_mode not in TRAINABLE_ROUTING:
            raise ConfigError(f"--routing must be one of {', '.join(TRAINABLE_ROUTING)}, got {self.routing_mode!r}")
        if not self.attention_priors or min(self.attention_priors) < 0:
            raise ConfigError("--attention-priors needs at least one weight, each >= 0")
        if self.data_config.seq_len <= self.train.scored + 1:
            raise ConfigError(
                f"--seq-len {self.data_config.seq_len} leaves no context before the "
                f"{self.train.scored} scored positions; use more than {self.train.scored + 1}"
            )

    @property
    def priors(self) -> tuple[float, ...]:
        """The starting routers training scores: the attention weights, or the static order alone under top-k."""
        return tuple(dict.fromkeys(self.attention_priors)) if self.routing_mode == "monotone" else (0.0,)

    def to_json(self) -> dict[str, Any]:
        """As run.json holds it (tuples as lists), so a resumed run compares like with like."""
        return dict(to_json(self))


def parse_weights(text: str) -> tuple[float, ...]:
    """`--attention-priors`: comma-separated non-negative numbers."""
    try:
        return tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"--attention-priors takes comma-separated numbers, got {text!r}") from None


def differences(saved: dict[str, Any], wanted: dict[str, Any], prefix: str = "") -> list[str]:
    """`name: saved -> wanted` for every setting that differs, nested fields as `a.b`."""
    found = []
    for key in sorted(set(saved) | set(wanted)):
        old, new = saved.get(key), wanted.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            found += differences(old, new, f"{prefix}{key}.")
        elif old != new:
            found.append(f"{prefix}{key}: {old!r} -> {new!r}")
    return found
