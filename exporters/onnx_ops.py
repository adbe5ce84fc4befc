"""What the routed model's compaction turns into inside torch.onnx.export.

During export, TokenCompact and TokenScatter become single `ftp` nodes (their bodies are added
afterwards as model-local functions); anywhere else they are the PyTorch reference, so the
module being exported is also the eager model it is validated against.
"""

from __future__ import annotations

from typing import Any

import torch
from onnxscript import opset18 as op

from ftp_deploy.plugins.token_compaction.contract import (
    COMPACT_OP,
    DOMAIN,
    OP_VERSION,
    PLUGIN_NAMESPACE,
    SCATTER_OP,
    SPARSITY_DEN,
    kept_count,
)
from ftp_deploy.plugins.token_compaction.onnx_functions import DOMAIN_OPSET
from ftp_deploy.plugins.token_compaction.reference import token_compact, token_scatter
from ftp_deploy.routed_model import CompactionOps

PLUGIN_ATTRIBUTES = {"plugin_namespace": PLUGIN_NAMESPACE, "plugin_version": OP_VERSION}


def compact(
    hidden: torch.Tensor, scores: torch.Tensor, sparsity_num: int, sparsity_den: int = SPARSITY_DEN
) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.onnx.is_in_onnx_export():
        return token_compact(hidden, scores, sparsity_num, sparsity_den)
    batch, seq_len, dim = hidden.shape
    # Symbolic during export: K becomes shape arithmetic on the input's sequence axis.
    kept = kept_count(seq_len, sparsity_num, sparsity_den)
    values, indices = torch.onnx.ops.symbolic_multi_out(
        f"{DOMAIN}::{COMPACT_OP}",
        (hidden, scores),
        {"sparsity_num": sparsity_num, "sparsity_den": sparsity_den, **PLUGIN_ATTRIBUTES},
        dtypes=(hidden.dtype, torch.int64),
        shapes=((batch, kept, dim), (batch, kept)),
        version=DOMAIN_OPSET,
    )
    return values, indices


def scatter(hidden: torch.Tensor, updated: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    if not torch.onnx.is_in_onnx_export():
        return token_scatter(hidden, updated, indices)
    return torch.onnx.ops.symbolic(
        f"{DOMAIN}::{SCATTER_OP}",
        (hidden, updated, indices),
        PLUGIN_ATTRIBUTES,
        dtype=hidden.dtype,
        shape=hidden.shape,
        version=DOMAIN_OPSET,
    )


ONNX_COMPACTION_OPS = CompactionOps(compact=compact, scatter=scatter)


def _stable_sort(self: Any, *, stable: bool | None = None, dim: int = -1, descending: bool = False) -> Any:
    """aten.sort.stable as one TopK over the whole axis: ONNX TopK keeps equal values in index order."""
    length = op.Shape(self, start=dim, end=None if dim == -1 else dim + 1)  # [1]: K = the axis length
    return op.TopK(self, length, axis=dim, largest=descending, sorted=True)


def _softmax(self: Any, dim: int, dtype: int = -1) -> Any:
    """aten.softmax.int computing in `dtype`, as PyTorch does.

    torch.onnx's own translation computes in the input's type and casts the result, so the fp32
    softmax of eager attention would run in fp16 / bf16.
    """
    if dtype != -1:
        self = op.Cast(self, to=dtype)
    return op.Softmax(self, axis=dim)


# torch.onnx has no translation of its own for stable sorts (the router's attention-rank factor).
TRANSLATIONS: dict[Any, Any] = {torch.ops.aten.sort.stable: _stable_sort, torch.ops.aten.softmax.int: _softmax}
