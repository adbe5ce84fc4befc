"""The router's training losses (FTP_SPEC section 6) and their weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ftp_deploy.errors import ConfigError
from ftp_deploy.router import static_scores, token_positions
from ftp_deploy.routing import forced_keep_mask, routing_scores, select_topk
from ftp_deploy.schedule import Schedule


@dataclass(frozen=True)
class LossWeights:
    """`L = w_g(step) * guide + sparsity * L_sparsity + distill * L_distill`.

    The guide weight starts at `guide` and falls linearly to 0 at `guide_decay` of the
    training steps: early on it pulls the router onto the static routing the schedule was
    searched with; later only the distillation and sparsity terms shape it.
    """

    guide: float = 1.0
    guide_decay: float = 0.5
    sparsity: float = 1.0
    distill: float = 1.0

    def __post_init__(self) -> None:
        if min(self.guide, self.sparsity, self.distill) < 0 or not 0 < self.guide_decay <= 1:
            raise ConfigError("loss weights must be >= 0 and guide_decay in (0, 1]")

    def guide_weight(self, step: int, total_steps: int) -> float:
        """Weight of the guide loss at `step` (0-based): `guide` at step 0, 0 from the decay end on."""
        decay_steps = max(1, round(self.guide_decay * total_steps))
        return self.guide * max(0.0, 1.0 - step / decay_steps)


def static_keep(attention_mask: torch.Tensor, schedule: Schedule) -> list[torch.Tensor]:
    """Per block, the [B, T] keep decisions of the static router: the guide loss's targets."""
    scores = routing_scores(
        static_scores(token_positions(attention_mask)), attention_mask, forced_keep_mask(attention_mask)
    )
    seq_len = attention_mask.shape[1]
    return [select_topk(scores, schedule.kept(block, seq_len)).keep_mask(seq_len) for block in range(len(schedule))]


def guide_loss(router_logits: list[torch.Tensor], targets: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """Mean BCE between keep probabilities and the static decisions, over valid tokens and blocks."""
    losses = [
        F.binary_cross_entropy_with_logits(logits[valid], target[valid].float())
        for logits, target in zip(router_logits, targets, strict=True)
    ]
    return torch.stack(losses).mean()


def soft_sparsity(router_logits: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """[L] expected fraction of valid tokens each block skips, from the keep probabilities."""
    return torch.stack([1 - torch.sigmoid(logits[valid]).mean() for logits in router_logits])


def sparsity_loss(achieved: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """`sum_l max(s_l - achieved_l, 0)`: only blocks that skip too little are penalized."""
    required = torch.tensor(schedule.sparsities, dtype=achieved.dtype, device=achieved.device)
    return (required - achieved).clamp(min=0).sum()
