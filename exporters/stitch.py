"""One flat ONNX graph from traced pieces: the prologue, the block graph once per layer, the epilogue.

The copies are plain nodes (no functions, no attribute references), so ONNX Runtime, TensorRT's
parser and onnx.checker see the same graph a whole-model trace would give. Each copy of the block
reads its own layer's weights (initializers named as in the PyTorch model, so tied weights are
stored once) and has the sentinel kept-count numerator replaced by its layer's.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_ir as ir
import torch
from onnx_ir.tensor_adapters import TorchTensor

from ftp_deploy.errors import ExportError
from ftp_deploy.plugins.token_compaction.contract import COMPACT_OP, DOMAIN

# (initializer name in a piece, its traced value) -> (name in the whole model, tensor)
WeightResolver = Callable[[str, ir.TensorProtocol | None], tuple[str, torch.Tensor | ir.TensorProtocol]]


@dataclass(frozen=True)
class LayerRewrite:
    """What makes one layer's copy of the block differ from the traced block, apart from its weights."""

    sentinel: int
    sparsity_num: int

    def apply(self, node: ir.Node) -> int:
        """Put the layer's numerator where the sentinel is; returns how many places changed."""
        site = sentinel_site(node, self.sentinel)
        if site == "attribute":
            node.attributes["sparsity_num"] = ir.AttrInt64("sparsity_num", self.sparsity_num)
        elif site == "constant":
            node.attributes["value"] = ir.AttrTensor("value", self.replaced(node.attributes["value"].as_tensor()))
        return int(site is not None)

    def replaced(self, tensor: ir.TensorProtocol) -> ir.TensorProtocol:
        return ir.tensor(np.full_like(tensor.numpy(), self.sparsity_num))

    def dim_name(self, name: str) -> str:
        return name.replace(f"{self.sentinel}*", f"{self.sparsity_num}*")


@dataclass
class GraphAssembler:
    """Collects nodes and initializers of the stitched graph; `instantiate` copies one piece into it."""

    nodes: list[ir.Node] = field(default_factory=list)
    initializers: dict[str, ir.Value] = field(default_factory=dict)
    functions: dict[ir.OperatorIdentifier, ir.Function] = field(default_factory=dict)
    opset_imports: dict[str, int] = field(default_factory=dict)
    # A piece may hold two values of one name (torch.onnx names both an op's result and a renamed
    # graph output `cos`, say): every copied value gets a name no other value has.
    used_names: set[str] = field(default_factory=set)

    def initializer(self, name: str, tensor: torch.Tensor | ir.TensorProtocol) -> ir.Value:
        if name not in self.initializers:
            value = tensor if isinstance(tensor, ir.TensorProtocol) else TorchTensor(tensor.detach(), name=name)
            self.initializers[name] = ir.Value(
                name=name, shape=ir.Shape(list(value.shape.numpy())), type=ir.TensorType(value.dtype), const_value=value
            )
        return self.initializers[name]

    def instantiate(
        self,
        piece: ir.Model,
        inputs: Mapping[str, ir.Value],
        weights: WeightResolver,
        prefix: str,
        rewrite: LayerRewrite | None = None,
        rename: Callable[[str], str] | None = None,
    ) -> dict[str, ir.Value]:
        """Copy `piece`'s nodes with its inputs bound to `inputs`; returns its outputs by name.

        `rename` gives the copy's symbolic dimensions the layer's own names (a decode layer's past length).
        """
        graph = piece.graph
        self.opset_imports.update(piece.opset_imports)
        self.functions.update(piece.functions)
        mapping: dict[ir.Value, ir.Value] = {}
        for value in graph.inputs:
            name = value.name or ""
            mapping[value] = inputs[name] if name in inputs else self.initializer(*weights(name, None))
        changed = 0
        for name, value in graph.initializers.items():
            constant = value.const_value
            if rewrite is not None and constant is not None and is_sentinel(constant, rewrite.sentinel):
                mapping[value] = self.initializer(f"{prefix}{name}", rewrite.replaced(constant))
                changed += 1
            else:
                mapping[value] = self.initializer(*weights(name, constant))
        for node in graph:
            copy = self._copy_node(node, mapping, prefix)
            if rewrite is not None:
                changed += rewrite.apply(copy)
                for output in copy.outputs:
                    output.shape = _renamed_dims(output.shape, rewrite.dim_name)
            if rename is not None:
                for output in copy.outputs:
                    output.shape = _renamed_dims(output.shape, rename)
            self.nodes.append(copy)
        if rewrite is not None and changed < 1:
            raise ExportError(f"stitching {prefix}: the block graph has no {DOMAIN}::{COMPACT_OP} to parameterize")
        return {value.name: mapping[value] for value in graph.outputs if value.name is not None}

    def _copy_node(self, node: ir.Node, mapping: dict[ir.Value, ir.Value], prefix: str) -> ir.Node:
        for attribute in node.attributes.values():
            if attribute.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS) or attribute.is_ref():
                raise ExportError(f"stitching {prefix}: node {node.name} has a subgraph or reference attribute")
        copy = ir.Node(
            node.domain,
            node.op_type,
            [None if value is None else mapping[value] for value in node.inputs],
            list(node.attributes.values()),
            overload=node.overload,
            num_outputs=len(node.outputs),
            version=node.version,
            name=f"{prefix}{node.name}",
        )
        for original, output in zip(node.outputs, copy.outputs, strict=True):
            output.name = self._unique(f"{prefix}{original.name}")
            output.type = original.type
            output.shape = original.shape.copy() if original.shape is not None else None
            mapping[original] = output
        return copy

    def _unique(self, name: str) -> str:
        candidate, suffix = name, 1
        while candidate in self.used_names:
            candidate, suffix = f"{name}.{suffix}", suffix + 1
        self.used_names.add(candidate)
        return candidate

    def cast(self, value: ir.Value, dtype: ir.DataType) -> ir.Value:
        """`value` cast to `dtype` by one Cast node (of an initializer: folded once when the session loads)."""
        node = ir.node("Cast", [value], attributes={"to": dtype}, name=f"{value.name}/cast")
        result = node.outputs[0]
        result.name, result.dtype, result.shape = f"{value.name}_{dtype.name.lower()}", dtype, value.shape
        self.nodes.append(node)
        return result

    def model(self, inputs: list[ir.Value], outputs: list[ir.Value], template: ir.Model) -> ir.Model:
        graph = ir.Graph(
            inputs,
            outputs,
            nodes=self.nodes,
            initializers=list(self.initializers.values()),
            opset_imports=self.opset_imports,
            name=template.graph.name or "ftp_deploy",
        )
        return ir.Model(
            graph,
            ir_version=template.ir_version,
            producer_name=template.producer_name,
            producer_version=template.producer_version,
            functions=list(self.functions.values()),
        )


def _renamed_dims(shape: ir.Shape | None, rename: Callable[[str], str]) -> ir.Shape | None:
    if shape is None:
        return None
    dims = [
        ir.SymbolicDim(rename(dim.value)) if isinstance(dim, ir.SymbolicDim) and dim.value else dim for dim in shape
    ]
    return ir.Shape(dims)


def sentinel_site(node: ir.Node, sentinel: int) -> str | None:
    """ "attribute" for TokenCompact's numerator, "constant" for a scalar int Constant equal to the sentinel."""
    if node.domain == DOMAIN and node.op_type == COMPACT_OP:
        return "attribute"
    value = node.attributes.get("value") if node.op_type == "Constant" and node.domain == "" else None
    if value is not None and value.type == ir.AttributeType.TENSOR and is_sentinel(value.as_tensor(), sentinel):
        return "constant"
    return None


def is_sentinel(tensor: ir.TensorProtocol, sentinel: int) -> bool:
    """A one-element integer tensor holding the sentinel (a Constant's value or a lifted initializer)."""
    if tensor.size != 1:
        return False
    array = tensor.numpy()
    return array.dtype.kind in "iu" and int(array.reshape(())) == sentinel


def check_sentinel_confined(block: ir.Model, sentinel: int) -> None:
    """The sentinel may appear only where LayerRewrite replaces it; anywhere else a layer would be wrong."""
    for node in block.graph:
        if sentinel_site(node, sentinel) is not None:
            continue
        for attribute in node.attributes.values():
            held = [attribute.value] if attribute.type == ir.AttributeType.INT else []
            if attribute.type == ir.AttributeType.INTS:
                held = list(attribute.value)
            elif attribute.type == ir.AttributeType.TENSOR and attribute.value.size <= 8:
                held = attribute.as_tensor().numpy().ravel().tolist()
            if sentinel in held:
                raise ExportError(f"the traced block carries its sparsity in {node.op_type}.{attribute.name}")
    for name, value in block.graph.initializers.items():
        tensor = value.const_value
        if tensor is None or is_sentinel(tensor, sentinel):
            continue
        if tensor.size <= 8 and sentinel in tensor.numpy().ravel().tolist():
            raise ExportError(f"the traced block carries its sparsity in the initializer {name}")
