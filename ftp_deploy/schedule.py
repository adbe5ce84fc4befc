"""Per-block sparsity schedules (FTP_SPEC section 2) and their FLOP-weighted mean."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ftp_deploy.errors import ConfigError
from ftp_deploy.plugins.token_compaction.contract import SPARSITY_DEN, kept_count

DEFAULT_S_MAX = 0.9


def check_sparsity(sparsity: float, s_max: float = DEFAULT_S_MAX, what: str = "sparsity") -> None:
    if not 0 <= sparsity <= s_max:
        raise ConfigError(f"{what} {sparsity:g} is outside [0, s_max={s_max:g}]")


def check_sink_fraction(fraction: float) -> None:
    """The share of leading tokens every block keeps (RouterSpec.sink_fraction) must leave tokens to route."""
    if not 0 <= fraction < 1:
        raise ConfigError(f"the attention-sink fraction must be in [0, 1), got {fraction:g}")


@dataclass(frozen=True)
class Schedule:
    """Required sparsity of each decoder block, held as integer thousandths.

    Thousandths are the one definition every implementation shares: `k_l = T - (T*n_l)//1000`.
    """

    thousandths: tuple[int, ...]
    s_max: float = DEFAULT_S_MAX

    def __post_init__(self) -> None:
        limit = round(self.s_max * SPARSITY_DEN)
        if not 0 <= self.s_max < 1:
            raise ConfigError(f"s_max must be in [0, 1), got {self.s_max}")
        for block, n in enumerate(self.thousandths):
            if not 0 <= n <= limit:
                raise ConfigError(f"block {block} sparsity {n / SPARSITY_DEN:g} is outside [0, s_max={self.s_max:g}]")

    @classmethod
    def from_sparsities(cls, sparsities: Sequence[float], s_max: float = DEFAULT_S_MAX) -> Schedule:
        for block, s in enumerate(sparsities):
            check_sparsity(s, s_max, f"block {block} sparsity")
        return cls(tuple(round(s * SPARSITY_DEN) for s in sparsities), s_max)

    @classmethod
    def uniform(cls, sparsity: float, num_layers: int, s_max: float = DEFAULT_S_MAX) -> Schedule:
        return cls.from_sparsities([sparsity] * num_layers, s_max)

    @property
    def sparsities(self) -> list[float]:
        return [n / SPARSITY_DEN for n in self.thousandths]

    def __len__(self) -> int:
        return len(self.thousandths)

    def kept(self, block: int, seq_len: int) -> int:
        return kept_count(seq_len, self.thousandths[block])

    def check_layers(self, num_layers: int) -> None:
        if len(self) != num_layers:
            raise ConfigError(f"the schedule has {len(self)} blocks but the model has {num_layers} layers")

    def mean(self, weights: Sequence[float] | None = None) -> float:
        """Mean sparsity; with per-block dense FLOPs as weights, the FLOP-weighted mean."""
        w = list(weights) if weights is not None else [1.0] * len(self)
        return sum(wi * s for wi, s in zip(w, self.sparsities, strict=True)) / sum(w)
