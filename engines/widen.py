"""An fp32 copy of an fp16/bf16 graph: the same nodes, every reduced-precision type made fp32.

ONNX Runtime's CPU provider has no bf16 kernels, so a bf16 file cannot run on it as it is. Its
widened copy runs, and matches the PyTorch model with the same (rounded) weights computing in
fp32: that checks the graph itself, routing included, to fp32 tolerances. What it cannot check is
the arithmetic in reduced precision; the smoke run of the file itself covers that where a
provider can run it.

A quantized file (export --quantize) likewise has an fp32-arithmetic copy: its MatMulNBits at
accuracy_level 0, which multiplies the dequantized blocks in fp32, where the shipped level 4 first
rounds each block of activations to int8 (measured: 0.7% of the largest output, beyond fp32's
tolerance). The copy matches PyTorch computing with the same dequantized weights to fp32 tolerances;
the shipped arithmetic's cost is measured as quality (benchmarks/quantization.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, GraphProto, NodeProto, TensorProto, numpy_helper

from ftp_deploy.formats.export_manifest import CPU_NATIVE_DTYPES, QUANTIZED_DOMAIN

NARROW_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
# Attributes that name an element type (Cast's `to`, the `dtype` of generator ops).
_TYPE_ATTRIBUTES = ("to", "dtype")


def widened_to_fp32(path: Path) -> onnx.ModelProto:
    """The model at `path` (external data loaded) with fp16/bf16 tensors, casts and types as fp32."""
    model = onnx.load(path)
    for graph in _graphs(model.graph):
        for tensor in graph.initializer:
            _widen_tensor(tensor)
        for info in [*graph.input, *graph.output, *graph.value_info]:
            if info.type.tensor_type.elem_type in NARROW_TYPES:
                info.type.tensor_type.elem_type = TensorProto.FLOAT
    for node in _all_nodes(model):
        for attribute in node.attribute:
            _widen_attribute(attribute)
    return model


def fp32_arithmetic(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model` with every MatMulNBits computing at accuracy_level 0 (fp32 products of its dequantized blocks)."""
    for node in _all_nodes(model):
        if node.op_type == "MatMulNBits" and node.domain == QUANTIZED_DOMAIN:
            kept = [attribute for attribute in node.attribute if attribute.name != "accuracy_level"]
            del node.attribute[:]
            node.attribute.extend(kept)
    return model


def cpu_runnable(path: Path, dtype: str, quantized: bool = False) -> Path | bytes:
    """The file itself, or the serialized copy ONNX Runtime's CPU provider computes it with in fp32: widened
    where the provider lacks `dtype`, with fp32 arithmetic where `quantized` (parity's copy, not the shipped speed)."""
    return _fp32_where(path, dtype not in CPU_NATIVE_DTYPES, quantized)


def fp32_copy(path: Path, dtype: str, quantized: bool = False) -> Path | bytes:
    """The file itself where it computes in fp32 already, else its serialized fp32-arithmetic copy (widened from
    `dtype`, MatMulNBits at accuracy level 0): what export validation compares with PyTorch in fp32."""
    return _fp32_where(path, dtype != "fp32", quantized)


def _fp32_where(path: Path, widen: bool, quantized: bool) -> Path | bytes:
    if not widen and not quantized:
        return path
    model = widened_to_fp32(path) if widen else onnx.load(path)
    return (fp32_arithmetic(model) if quantized else model).SerializeToString()


def _graphs(graph: GraphProto) -> Iterator[GraphProto]:
    """`graph` and every subgraph in it (an If's branches: the generator graph's)."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from _graphs(attribute.g)


def _all_nodes(model: onnx.ModelProto) -> Iterator[NodeProto]:
    yield from _nodes(model.graph.node)
    for function in model.functions:
        yield from _nodes(function.node)


def _nodes(nodes: Iterable[NodeProto]) -> Iterator[NodeProto]:
    for node in nodes:
        yield node
        for attribute in node.attribute:
            if attribute.type == AttributeProto.GRAPH:
                yield from _nodes(attribute.g.node)


def _widen_attribute(attribute: AttributeProto) -> None:
    if attribute.type == AttributeProto.TENSOR:
        _widen_tensor(attribute.t)
    elif attribute.type == AttributeProto.INT and attribute.name in _TYPE_ATTRIBUTES and attribute.i in NARROW_TYPES:
        attribute.i = TensorProto.FLOAT


def _widen_tensor(tensor: TensorProto) -> None:
    if tensor.data_type in NARROW_TYPES:
        tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float32), tensor.name))
