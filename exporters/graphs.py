"""The modules torch.onnx.export traces: (input_ids, attention_mask) -> the spec's outputs, in order."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ftp_deploy.errors import UnsupportedExportError
from ftp_deploy.exporters.attention import use_grouped_attention
from ftp_deploy.exporters.onnx_ops import ONNX_COMPACTION_OPS
from ftp_deploy.exporters.pieces import layer_cache
from ftp_deploy.exporters.spec import ExportSpec
from ftp_deploy.generation.cache import RoutedCache
from ftp_deploy.models import DTYPES
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import token_positions
from ftp_deploy.routing import valid_first


class RoutedGraph(nn.Module):
    """Compact mode with the ONNX-emitting TokenCompact / TokenScatter (the reference when run eagerly)."""

    def __init__(self, routed: RoutedModel, spec: ExportSpec) -> None:
        super().__init__()
        self.routed = routed
        self.logits_to_keep = 1 if spec.last_token_logits else 0
        self.debug_outputs = spec.debug_outputs
        self.with_past = spec.with_past

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = RoutedCache() if self.with_past else None
        out = self.routed(
            input_ids,
            attention_mask,
            logits_to_keep=self.logits_to_keep,
            return_block_outputs=self.debug_outputs,
            always_mask=True,
            cache=cache,
        )
        present = _present(cache, len(self.routed.layers)) if cache is not None else ()
        if not self.debug_outputs:
            return (out.logits, *present)
        return (out.logits, *present, *out.indices, *out.block_outputs)


def _present(cache: RoutedCache, num_layers: int) -> tuple[torch.Tensor, ...]:
    return tuple(tensor for layer in range(num_layers) for tensor in layer_cache(cache, layer))


class DenseGraph(nn.Module):
    """The unrouted Hugging Face model, with the position ids the routed model uses under padding."""

    def __init__(self, base: Any, spec: ExportSpec) -> None:
        super().__init__()
        self.base = base
        self.logits_to_keep = 1 if spec.last_token_logits else 0
        self.with_past = spec.with_past

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = RoutedCache() if self.with_past else None
        out = self.base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=token_positions(attention_mask),
            use_cache=cache is not None,
            cache=cache,
            logits_to_keep=self.logits_to_keep,
        )
        if cache is None:
            return (out.logits,)
        # Every token is cached in every layer, valid ones first, as the exported blocks hand them over
        # (RoutedModel.run_layer_causal); padding slots are not valid.
        order, _ = valid_first(attention_mask.bool())
        present: list[torch.Tensor] = []
        for keys, values, _ in cache:
            slots = order[:, None, :, None].expand_as(keys)
            present += [keys.gather(2, slots), values.gather(2, slots), attention_mask.bool().gather(1, order)]
        return (out.logits, *present)


def export_module(routed: RoutedModel, spec: ExportSpec) -> nn.Module:
    """The module to export for `spec`.

    Changes `routed` in place: ONNX-emitting compaction ops, eager attention, and the base
    model's weights in the spec's dtype (the router stays fp32).
    """
    routed.ops = ONNX_COMPACTION_OPS
    # Decode: eager attention's arithmetic (softmax in fp32 whatever the weights' dtype, finite
    # additive masks) without repeating each key/value head for its query heads; prefill: causal
    # attention over each block's slots, fused or in standard ops (exporters/attention.py).
    use_grouped_attention(routed.base, spec.attention)
    cast_weights(routed.base, spec.dtype)
    module = DenseGraph(routed.base, spec) if spec.dense else RoutedGraph(routed, spec)
    return module.eval()


def cast_weights(module: nn.Module, dtype: str) -> None:
    """Parameters to `dtype`; buffers (the rotary frequencies) stay fp32 as the model computes them."""
    target = DTYPES[dtype]
    for parameter in module.parameters():
        parameter.data = parameter.data.to(target)
        if not bool(torch.isfinite(parameter.data).all()):
            raise UnsupportedExportError(
                f"the model's weights do not fit {dtype} (values beyond its range become inf); export fp32 or bf16"
            )
