"""What a model really computed over an evaluation: token sparsity and FLOP ratio against dense."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ftp_deploy.flops import block_flops
from ftp_deploy.formats.eval_results import Compute


@dataclass
class Tally:
    """Sums over every sequence scored: (token, block) pairs computed and block FLOPs, routed vs dense."""

    computed: int = 0
    total: int = 0
    flops: float = 0.0
    dense_flops: float = 0.0

    def add(self, config: Any, kept: torch.Tensor, lengths: torch.Tensor) -> None:
        """`kept[b, l]`: valid tokens block l computed in row b; `lengths[b]`: valid tokens of row b."""
        for row_kept, length in zip(kept.tolist(), lengths.tolist(), strict=True):
            self.computed += sum(row_kept)
            self.total += length * len(row_kept)
            self.flops += sum(block_flops(config, k) for k in row_kept)
            self.dense_flops += len(row_kept) * block_flops(config, length)

    @classmethod
    def combined(cls, tallies: Iterable[Tally]) -> Tally:
        parts = list(tallies)
        return cls(
            sum(t.computed for t in parts),
            sum(t.total for t in parts),
            sum(t.flops for t in parts),
            sum(t.dense_flops for t in parts),
        )

    @property
    def token_sparsity(self) -> float:
        """Fraction of (token, block) pairs skipped (FTP_SPEC section 2)."""
        return 1 - self.computed / self.total if self.total else 0.0

    @property
    def flop_ratio(self) -> float:
        """Decoder-block FLOPs of the model over those of the dense model on the same sequences."""
        return self.flops / self.dense_flops if self.dense_flops else 1.0

    def compute(self) -> Compute:
        return Compute(self.token_sparsity, self.flop_ratio)
