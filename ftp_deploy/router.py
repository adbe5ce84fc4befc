"""The FTP router: four low-dimensional factors into one small MLP shared by all blocks."""

from __future__ import annotations

import torch
from torch import nn

# The router's description is a record of ftp_config.json; it is defined there, once.
from ftp_deploy.formats.routed_config import FACTOR_NAMES as FACTOR_NAMES
from ftp_deploy.formats.routed_config import RouterSpec as RouterSpec

ROUTER_KINDS = ("learned", "static", "random")


class FactorRouter(nn.Module):
    """4 -> hidden -> 1 MLP; its output is a keep logit per token (FTP_SPEC section 3)."""

    def __init__(self, hidden: int = 64) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(len(FACTOR_NAMES), hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, factors: torch.Tensor) -> torch.Tensor:
        return self.net(factors).squeeze(-1)


def token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position id of each token among the valid ones (0 for padding), as HF's generate uses."""
    return (attention_mask.long().cumsum(1) - 1).clamp(min=0)


def position_factor(positions: torch.Tensor, valid_count: torch.Tensor) -> torch.Tensor:
    return positions.float() / (valid_count.float() - 1).clamp(min=1).unsqueeze(1)


def rank_factor(attention_score: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Rank of each valid token's attention score in its sequence, scaled to [0, 1]."""
    # Scores are >= 0, so the finite minimum sorts padding first just as -inf would, and keeps
    # inf out of exported graphs.
    masked = attention_score.masked_fill(~valid, torch.finfo(attention_score.dtype).min)
    order = torch.sort(masked, dim=1, stable=True).indices
    ranks = torch.argsort(order, dim=1)
    pad_count = (~valid).sum(1, keepdim=True)
    valid_count = valid.sum(1, keepdim=True)
    return ((ranks - pad_count).clamp(min=0).float() / (valid_count - 1).clamp(min=1).float()) * valid


def router_factors(
    positions: torch.Tensor,
    valid: torch.Tensor,
    attention_score: torch.Tensor,
    sparsity: float | torch.Tensor,
) -> torch.Tensor:
    """The [B, T, 4] factor tensor for one block; `sparsity` may be a 0-d tensor (an exported block's input)."""
    valid_count = valid.sum(1)
    return torch.stack(
        [
            position_factor(positions, valid_count),
            attention_score,
            rank_factor(attention_score, valid),
            torch.zeros_like(attention_score) + sparsity,
        ],
        dim=-1,
    )


def static_scores(positions: torch.Tensor) -> torch.Tensor:
    """Static priority x_0, x_{T-1}, x_{T-2}, ...: later tokens score higher; x_0 is forced separately."""
    return positions.float()


def random_scores(shape: torch.Size, seed: int, block: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator(device="cpu").manual_seed(seed * 1_000_003 + block)
    return torch.rand(shape, generator=generator).to(device)
