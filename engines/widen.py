"""An fp32 copy of an fp16/bf16 graph: the same nodes, every reduced-precision type made fp32.

ONNX Runtime's CPU provider has no bf16 kernels, so a bf16 file cannot run on it as it is. Its
widened copy runs, and matches the PyTorch model with the same (rounded) weights computing in
fp32: that checks the graph itself, routing included, to fp32 tolerances. What it cannot check is
the arithmetic in reduced precision; the smoke run of the file itself covers that where a
provider can run it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import AttributeProto, NodeProto, TensorProto, numpy_helper

from ftp_deploy.formats.export_manifest import CPU_NATIVE_DTYPES

NARROW_TYPES = frozenset({TensorProto.FLOAT16, TensorProto.BFLOAT16})
# Attributes that name an element type (Cast's `to`, the `dtype` of generator ops).
_TYPE_ATTRIBUTES = ("to", "dtype")


def widened_to_fp32(path: Path) -> onnx.ModelProto:
    """The model at `path` (external data loaded) with fp16/bf16 tensors, casts and types as fp32."""
    model = onnx.load(path)
    graph = model.graph
    for tensor in graph.initializer:
        _widen_tensor(tensor)
    for node in _all_nodes(model):
        for attribute in node.attribute:
            _widen_attribute(attribute)
    for info in [*graph.input, *graph.output, *graph.value_info]:
        if info.type.tensor_type.elem_type in NARROW_TYPES:
            info.type.tensor_type.elem_type = TensorProto.FLOAT
    return model


def cpu_runnable(path: Path, dtype: str) -> Path | bytes:
    """The file itself, or its serialized fp32 widening where ONNX Runtime's CPU provider lacks `dtype`."""
    if dtype in CPU_NATIVE_DTYPES:
        return path
    return widened_to_fp32(path).SerializeToString()


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
