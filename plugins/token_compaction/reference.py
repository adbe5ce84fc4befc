"""PyTorch reference of TokenCompact / TokenScatter: the single source of truth.

Every other implementation (ONNX function bodies, Triton kernels, the TensorRT plugin)
is tested against these two functions.
"""

import torch

from ftp_deploy.plugins.token_compaction.contract import SPARSITY_DEN, kept_count


def select_top_rows(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices [B, k] of each row's k highest scores, ties to the lower position, ascending."""
    # A stable descending sort keeps equal scores in position order, which is the tie rule.
    order = torch.sort(scores, dim=1, descending=True, stable=True).indices[:, :k]
    return torch.sort(order, dim=1).values


def gather_rows(hidden: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """hidden[b, indices[b, k], :] as a [B, K, D] tensor."""
    return torch.gather(hidden, 1, indices.unsqueeze(-1).expand(-1, -1, hidden.shape[-1]))


def token_compact(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    sparsity_num: int,
    sparsity_den: int = SPARSITY_DEN,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TokenCompact(hidden[B,T,D], scores[B,T]) -> (compact[B,K,D], indices[B,K] int64)."""
    k = kept_count(hidden.shape[1], sparsity_num, sparsity_den)
    indices = select_top_rows(scores, k)
    return gather_rows(hidden, indices), indices


def token_scatter(hidden: torch.Tensor, updated: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """TokenScatter(hidden[B,T,D], updated[B,K,D], indices[B,K]) -> hidden with rows replaced."""
    index = indices.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.scatter(1, index, updated.to(hidden.dtype))
