"""Every setting of a training run, saved in run.json; a resumed run must match them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ftp_deploy.errors import ConfigError
from ftp_deploy.schedule import DEFAULT_S_MAX, check_sink_fraction, check_sparsity
from ftp_deploy.training.config import DataConfig, LossWeights, SearchConfig, TrainConfig

# The fine-tune search starts at the trained schedule and moves in smaller steps.
FINETUNE_SEARCH = SearchConfig(population=8, generations=3, mutation_sigma=0.01, init_sigma=0.015)


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
    data_config: DataConfig = field(default_factory=DataConfig)
    search: SearchConfig = field(default_factory=SearchConfig)
    finetune: SearchConfig = FINETUNE_SEARCH
    train: TrainConfig = field(default_factory=TrainConfig)
    losses: LossWeights = field(default_factory=LossWeights)

    def __post_init__(self) -> None:
        check_sparsity(self.sparsity, self.s_max)
        check_sink_fraction(self.sink_fraction)
        if self.data_config.seq_len <= self.train.scored + 1:
            raise ConfigError(
                f"--seq-len {self.data_config.seq_len} leaves no context before the "
                f"{self.train.scored} scored positions; use more than {self.train.scored + 1}"
            )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
