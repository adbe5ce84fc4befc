"""The weights a `--quantize` export stores, dequantized into the PyTorch model that is its reference.

A quantized export keeps each base-model weight W [N, K] as MatMulNBits blocks (exporters/quantize.py):
`bits`-bit codes packed along K (the first code in the low bits of a byte), an fp32 scale and a
zero point per block. The reference computes with (code - zero point) * scale in W's place, so parity
compares the graph, not the rounding, as a bf16 file is compared against bf16-rounded weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import torch
from torch import nn

from ftp_deploy.errors import ArtifactError
from ftp_deploy.formats.export_manifest import QuantizationRecord, quantized_names


def dequantize(packed: np.ndarray, scales: np.ndarray, zero_points: np.ndarray, bits: int, columns: int) -> np.ndarray:
    """W [N, K] from packed [N, blocks, block*bits/8] codes, scales [N, blocks] and packed zero points."""
    rows, blocks = packed.shape[0], packed.shape[1]
    codes = _unpacked(packed, bits).reshape(rows, blocks, -1).astype(np.float32)
    zeros = _unpacked(zero_points, bits).reshape(rows, -1)[:, :blocks].astype(np.float32)
    weight = (codes - zeros[..., None]) * scales.reshape(rows, blocks, 1).astype(np.float32)
    return weight.reshape(rows, -1)[:, :columns]


def _unpacked(packed: np.ndarray, bits: int) -> np.ndarray:
    mask = (1 << bits) - 1
    return np.stack([(packed >> (bits * i)) & mask for i in range(8 // bits)], axis=-1)


def use_stored_weights(model: nn.Module, path: Path, record: QuantizationRecord) -> list[str]:
    """Set every parameter of `model` that the graph at `path` stores quantized to its dequantized blocks.

    Parameters are named as the graph names them (the routed model's, without `base.`); returns the
    names set. A quantized weight the model has no parameter of the same shape for is an ArtifactError.
    """
    initializers = ir.load(path).graph.initializers
    stored = {name for name in initializers if name.endswith(f"_Q{record.bits}")}
    replaced = []
    for name, parameter in model.named_parameters():
        packed, scales, zero_points = quantized_names(name, record.bits)
        if packed not in stored:
            continue
        codes, scale, zero = (_array(initializers[part], path) for part in (packed, scales, zero_points))
        weight = dequantize(codes, scale, zero, bits=record.bits, columns=int(parameter.shape[-1]))
        if tuple(weight.shape) != tuple(parameter.shape):
            raise ArtifactError(f"{path.name}: {name} is stored as {list(weight.shape)}, not {list(parameter.shape)}")
        parameter.data = torch.from_numpy(np.ascontiguousarray(weight)).to(parameter.device, parameter.dtype)
        replaced.append(name)
        stored.discard(packed)
    if stored:
        raise ArtifactError(f"{path.name} stores quantized weights the model does not have: {sorted(stored)[:3]}")
    return replaced


def _array(value: ir.Value, path: Path) -> np.ndarray:
    if value.const_value is None:
        raise ArtifactError(f"{path.name}: the quantized initializer {value.name} holds no data")
    return value.const_value.numpy()
