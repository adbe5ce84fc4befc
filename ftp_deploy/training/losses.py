"""The router's training losses (FTP_SPEC section 6); their weights, `LossWeights`, are in training/config.py."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ftp_deploy.router import static_scores, token_positions
from ftp_deploy.routing import forced_keep_mask, routing_scores, select_topk
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.config import LossWeights as LossWeights  # defined torch-free for the CLI


def static_keep(attention_mask: torch.Tensor, schedule: Schedule, sink_fraction: float = 0.0) -> list[torch.Tensor]:
    """Per block, the [B, T] keep decisions of the static router (with its sink prefix): the guide loss's targets."""
    scores = routing_scores(
        static_scores(token_positions(attention_mask)),
        attention_mask,
        forced_keep_mask(attention_mask, sink_fraction),
    )
    seq_len = attention_mask.shape[1]
    return [select_topk(scores, schedule.kept(block, seq_len)).keep_mask(seq_len) for block in range(len(schedule))]


def guide_losses(router_logits: list[torch.Tensor], targets: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """[L] mean BCE between keep probabilities and the static decisions over valid tokens, per block.

    The guide loss is their mean over blocks.
    """
    losses = [
        F.binary_cross_entropy_with_logits(logits[valid], target[valid].float())
        for logits, target in zip(router_logits, targets, strict=True)
    ]
    return torch.stack(losses)


def soft_sparsity(router_logits: list[torch.Tensor], valid: torch.Tensor) -> torch.Tensor:
    """[L] expected fraction of valid tokens each block skips, from the keep probabilities."""
    return torch.stack([1 - torch.sigmoid(logits[valid]).mean() for logits in router_logits])


def sparsity_loss(achieved: torch.Tensor, schedule: Schedule) -> torch.Tensor:
    """`sum_l max(s_l - achieved_l, 0)`: only blocks that skip too little are penalized."""
    required = torch.tensor(schedule.sparsities, dtype=achieved.dtype, device=achieved.device)
    return (required - achieved).clamp(min=0).sum()
