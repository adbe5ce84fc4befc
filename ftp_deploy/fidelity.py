"""How closely a routed model follows the dense one, over the scored positions (FTP_SPEC 1b).

The scored positions are the predictions of the last `S` tokens of each sequence: the
logits at positions `T-S-1 .. T-2`, whose targets are the tokens `T-S .. T-1`. KL, top-1
agreement and perplexity all read the same positions, so every figure describes the same
predictions. A forward computes `scored + 1` logits (`logits_to_keep`) and drops the last.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ftp_deploy.formats.measures import FidelitySummary
from ftp_deploy.scored import SCORED_POSITIONS as SCORED_POSITIONS  # torch-free for the CLI


def logits_to_keep(scored: int) -> int:
    """How many trailing logits a forward must compute to cover `scored` predictions."""
    return scored + 1


def scored_logits(logits: torch.Tensor, scored: int) -> torch.Tensor:
    """[B, S, V] logits of the scored positions, from logits covering at least `scored + 1` positions."""
    return logits[:, -scored - 1 : -1]


def scored_targets(input_ids: torch.Tensor, scored: int) -> torch.Tensor:
    """[B, S] next-token targets of the scored positions."""
    return input_ids[:, -scored:]


def log_probs(logits: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(logits.float(), dim=-1)


def kl_per_row(dense_log_probs: torch.Tensor, routed_logits: torch.Tensor) -> torch.Tensor:
    """[B] mean over each sequence's scored positions of KL(dense || routed)."""
    routed = log_probs(routed_logits)
    return (dense_log_probs.exp() * (dense_log_probs - routed)).sum(-1).mean(-1)


def kl_to_dense(dense_log_probs: torch.Tensor, routed_logits: torch.Tensor) -> torch.Tensor:
    """Mean over positions of KL(dense || routed); differentiable in `routed_logits`."""
    return kl_per_row(dense_log_probs, routed_logits).mean()


def token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """[B, S] negative log-likelihood of each target."""
    return -log_probs(logits).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@dataclass
class Fidelity:
    """Running totals over batches; `add` takes scored logits, `summary` gives the figures.

    `window_kl` keeps each sequence's KL, the unit that paired comparisons resample.
    """

    positions: int = 0
    kl_sum: float = 0.0
    agree_sum: int = 0
    dense_nll_sum: float = 0.0
    routed_nll_sum: float = 0.0
    window_kl: list[float] = field(default_factory=list)

    def add(self, dense_logits: torch.Tensor, routed_logits: torch.Tensor, targets: torch.Tensor) -> None:
        count = targets.numel()
        dense = log_probs(dense_logits)
        self.positions += count
        rows = kl_per_row(dense, routed_logits)
        self.window_kl += rows.tolist()
        self.kl_sum += float(rows.mean()) * count
        self.agree_sum += int((dense_logits.argmax(-1) == routed_logits.argmax(-1)).sum())
        self.dense_nll_sum += float(-dense.gather(-1, targets.unsqueeze(-1)).sum())
        self.routed_nll_sum += float(token_nll(routed_logits, targets).sum())

    def summary(self) -> FidelitySummary:
        n = max(self.positions, 1)
        return FidelitySummary(
            kl=self.kl_sum / n,
            top1_agreement=self.agree_sum / n,
            perplexity=math.exp(self.routed_nll_sum / n),
            dense_perplexity=math.exp(self.dense_nll_sum / n),
            positions=float(self.positions),
        )
