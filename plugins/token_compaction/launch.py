"""PyTorch entry points of the Triton kernels: the signatures and results of reference.py.

They take CUDA tensors, or CPU tensors when TRITON_INTERPRET=1 was set before the kernels module
was first imported (Triton's interpreter: how the kernels are tested on machines without a GPU).
The kernels module, and so triton, is imported at the first call: importing this module needs
neither.
"""

import torch

from ftp_deploy.plugins.token_compaction.contract import SPARSITY_DEN, kept_count
from ftp_deploy.plugins.token_compaction.geometry import DEFAULT_CONFIG, LaunchConfig, programs_per_row


def token_compact_triton(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    sparsity_num: int,
    sparsity_den: int = SPARSITY_DEN,
    *,
    config: LaunchConfig = DEFAULT_CONFIG,
) -> tuple[torch.Tensor, torch.Tensor]:
    """TokenCompact(hidden[B,T,D], scores[B,T] fp32) -> (compact[B,K,D], indices[B,K] int64)."""
    if hidden.dim() != 3 or scores.shape != hidden.shape[:2]:
        raise ValueError(f"need hidden [B,T,D] and scores [B,T]; got {tuple(hidden.shape)}, {tuple(scores.shape)}")
    batch, seq_len, dim = hidden.shape
    kept = kept_count(seq_len, sparsity_num, sparsity_den)
    compact = hidden.new_empty((batch, kept, dim))
    indices = torch.empty((batch, kept), dtype=torch.int64, device=hidden.device)
    token_compact_into(hidden, scores, compact, indices, config=config)
    return compact, indices


def token_compact_into(
    hidden: torch.Tensor,
    scores: torch.Tensor,
    compact: torch.Tensor,
    indices: torch.Tensor,
    *,
    config: LaunchConfig = DEFAULT_CONFIG,
) -> None:
    """TokenCompact writing into given contiguous outputs; K is `indices.shape[1]`."""
    from ftp_deploy.plugins.token_compaction import kernels

    if scores.dtype != torch.float32:
        raise ValueError(f"scores must be float32 (the operator contract), got {scores.dtype}")
    batch, seq_len, dim = hidden.shape
    if batch == 0 or seq_len == 0:
        return  # nothing to select; a CUDA grid may not be empty
    grid = (programs_per_row(seq_len, config.rows), batch)
    kernels.token_compact_kernel[grid](
        hidden.contiguous(),
        scores.contiguous(),
        seq_len,
        indices.shape[1],
        dim,
        compact,
        indices,
        num_warps=config.num_warps,
        **config.compact_constexprs(),
    )


def token_scatter_triton(
    hidden: torch.Tensor,
    updated: torch.Tensor,
    indices: torch.Tensor,
    *,
    config: LaunchConfig = DEFAULT_CONFIG,
) -> torch.Tensor:
    """TokenScatter(hidden[B,T,D], updated[B,K,D], indices[B,K]) -> hidden with rows replaced.

    `indices` must be strictly ascending per row, as TokenCompact emits them: the kernel
    binary-searches them (the reference accepts any order).
    """
    batch, _, dim = hidden.shape
    if updated.shape != (batch, indices.shape[1], dim) or indices.shape[0] != batch:
        raise ValueError(
            f"need hidden [B,T,D], updated [B,K,D], indices [B,K]; got {tuple(hidden.shape)}, "
            f"{tuple(updated.shape)}, {tuple(indices.shape)}"
        )
    out = torch.empty_like(hidden, memory_format=torch.contiguous_format)
    token_scatter_into(hidden, updated, indices, out, config=config)
    return out


def token_scatter_into(
    hidden: torch.Tensor,
    updated: torch.Tensor,
    indices: torch.Tensor,
    out: torch.Tensor,
    *,
    config: LaunchConfig = DEFAULT_CONFIG,
) -> None:
    """TokenScatter writing into a given contiguous `out` shaped like `hidden`."""
    from ftp_deploy.plugins.token_compaction import kernels

    batch, seq_len, dim = hidden.shape
    if batch == 0 or seq_len == 0:
        return
    grid = (programs_per_row(seq_len, config.rows), batch)
    kernels.token_scatter_kernel[grid](
        hidden.contiguous(),
        # Cast here, as the reference does: the kernel only copies, so results stay bit-exact.
        updated.to(out.dtype).contiguous(),
        indices.contiguous(),
        seq_len,
        indices.shape[1],
        dim,
        out,
        num_warps=config.num_warps,
        **config.scatter_constexprs(),
    )
