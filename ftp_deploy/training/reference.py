"""A fixed batch with the dense model's scored log-probabilities, computed once.

The schedule searches score hundreds of candidates on one calibration batch and the
final report scores a few routers on the held-out blocks: the dense side of every
comparison is the same, so it is computed here once and reused.
"""

from __future__ import annotations

from typing import Any

import torch

from ftp_deploy.fidelity import Fidelity, kl_to_dense, logits_to_keep, scored_logits, scored_targets
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.training.ranks import ONE_PROCESS, Ranks
from ftp_deploy.training.trainer import dense_log_probs

# Rows per forward: bounds the memory of a compact-mode pass at long sequence lengths.
CHUNK = 4


class DenseReference:
    def __init__(self, base: Any, ids: torch.Tensor, scored: int) -> None:
        self.chunks = ids.split(CHUNK)
        self.scored = scored
        self.dense = [dense_log_probs(base, chunk, scored) for chunk in self.chunks]

    @torch.no_grad()
    def _routed(self, routed: RoutedModel, index: int) -> torch.Tensor:
        """Scored logits of chunk `index` through `routed`."""
        logits = routed(self.chunks[index], logits_to_keep=logits_to_keep(self.scored)).logits
        return scored_logits(logits, self.scored)

    def kl(self, routed: RoutedModel, ranks: Ranks = ONE_PROCESS) -> float:
        """Mean KL(dense || routed) over the scored positions, routed in compact mode.

        With several `ranks` the chunks are shared out; the result is the same on every rank.
        """

        def chunk_kl(index: int) -> float:
            return float(kl_to_dense(self.dense[index], self._routed(routed, index))) * self.dense[index].shape[0]

        return sum(ranks.map(chunk_kl, range(len(self.chunks)))) / sum(d.shape[0] for d in self.dense)

    def fidelity(self, routed: RoutedModel, totals: Fidelity | None = None) -> Fidelity:
        """KL, top-1 agreement and perplexities of `routed`, added to `totals` when given."""
        totals = totals if totals is not None else Fidelity()
        for index, (chunk, dense) in enumerate(zip(self.chunks, self.dense, strict=True)):
            totals.add(dense, self._routed(routed, index), scored_targets(chunk, self.scored))
        return totals
