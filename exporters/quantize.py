"""`export --quantize int4|int8`: the base model's weights as blocks of integers in a stitched graph.

Every weight MatMul of a stitched graph reads `Transpose(W)` of a PyTorch Linear weight W [N, K]
(torch.onnx's form of `linear`), which onnxruntime's MatMulNBitsQuantizer does not recognize as a
constant weight. MatMulNBits stores its blocks in W's own layout ([N, K/block, ...]), so the pair
Transpose + MatMul becomes one MatMulNBits over W's blocks: nothing is transposed, nothing stored twice.
The blocks are the quantizer's own (`DefaultWeightOnlyQuantizer.qbits_block_quant` of W^T: round to
nearest, asymmetric, fp32 scales), named as it names them, so they are the bytes MatMulNBitsQuantizer
writes for the same weight. The token embedding's Gather becomes GatherBlockQuantized over the same
blocks (onnxruntime-genai's tied form), so a tied embedding and LM head are stored once, quantized.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import numpy as np
import onnx_ir as ir
from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, DefaultWeightOnlyQuantizer

from ftp_deploy.formats.export_manifest import (
    QUANTIZED_DOMAIN,
    QuantizationRecord,
    quantized_names,
)


@dataclass(frozen=True)
class _Blocks:
    """One weight W [N, K] as MatMulNBits takes it: packed [N, K/block, block*bits/8], scales, zero points."""

    packed: ir.Value
    scales: ir.Value
    zero_points: ir.Value
    rows: int  # N
    columns: int  # K
    row_bytes: int  # of the packed codes: blocks x block_size x bits / 8


class WeightQuantizer:
    """Rewrites one graph's weight MatMuls and embedding Gather; `added` names the initializers it made."""

    def __init__(self, graph: ir.Graph, record: QuantizationRecord, weights: Collection[str]) -> None:
        self.graph = graph
        self.record = record
        self.weights = weights  # initializer names that may be quantized (the router's stay fp32)
        config = DefaultWeightOnlyQuantConfig(
            block_size=record.block_size,
            is_symmetric=False,
            accuracy_level=record.accuracy_level,
            bits=record.bits,
        )
        self.quantizer = DefaultWeightOnlyQuantizer(config)
        self.blocks: dict[str, _Blocks] = {}
        self.added: set[str] = set()

    def run(self) -> None:
        for node in list(self.graph):
            if node.domain != "":
                continue
            if node.op_type == "MatMul":
                weight = self._transposed_weight(node.inputs[1])
                if weight is not None:
                    self._replace(node, [self._matmul(node, weight)])
            elif node.op_type == "Gather" and self._is_weight(node.inputs[0]) and _gather_axis(node) == 0:
                self._replace(node, self._gather(node))
        self._drop_unused()

    def _is_weight(self, value: ir.Value | None) -> bool:
        return (
            value is not None
            and value.is_initializer()
            and value.name in self.weights
            and value.const_value is not None
            and len(value.const_value.shape) == 2
        )

    def _transposed_weight(self, value: ir.Value | None) -> ir.Value | None:
        """W where `value` is Transpose(W) of a 2-D weight W (perm [1, 0], or the default reversal)."""
        node = value.producer() if value is not None else None
        if node is None or node.op_type != "Transpose" or node.domain != "":
            return None
        perm = node.attributes.get("perm")
        if perm is not None and list(perm.as_ints()) != [1, 0]:
            return None
        weight = node.inputs[0]
        return weight if self._is_weight(weight) else None

    def _blocks_of(self, weight: ir.Value) -> _Blocks:
        name = weight.name or ""
        if name not in self.blocks:
            assert weight.const_value is not None  # _is_weight checked it
            array = np.asarray(weight.const_value.numpy(), dtype=np.float32)
            packed, scales, zero_points = self.quantizer.qbits_block_quant(np.ascontiguousarray(array.T))
            names = quantized_names(name, self.record.bits)
            self.blocks[name] = _Blocks(
                self._initializer(names[0], packed),
                self._initializer(names[1], scales),
                self._initializer(names[2], zero_points),
                rows=array.shape[0],
                columns=array.shape[1],
                row_bytes=packed.shape[1] * packed.shape[2],
            )
        return self.blocks[name]

    def _initializer(self, name: str, array: np.ndarray) -> ir.Value:
        value = ir.Value(
            name=name, shape=ir.Shape(array.shape), type=ir.TensorType(ir.DataType.from_numpy(array.dtype))
        )
        value.const_value = ir.tensor(array, name=name)
        self.graph.register_initializer(value)
        self.added.add(name)
        return value

    def _matmul(self, node: ir.Node, weight: ir.Value) -> ir.Node:
        blocks = self._blocks_of(weight)
        return ir.node(
            "MatMulNBits",
            [node.inputs[0], blocks.packed, blocks.scales, blocks.zero_points],
            attributes={
                "K": blocks.columns,
                "N": blocks.rows,
                "bits": self.record.bits,
                "block_size": self.record.block_size,
                "accuracy_level": self.record.accuracy_level,
            },
            domain=QUANTIZED_DOMAIN,
            name=f"{node.name}_Q{self.record.bits}",
        )

    def _gather(self, node: ir.Node) -> list[ir.Node]:
        """GatherBlockQuantized over the MatMulNBits blocks, seen as [N, K/block * blob] (genai's tied form);
        each row's padding to whole blocks is sliced off."""
        weight = node.inputs[0]
        assert weight is not None
        blocks = self._blocks_of(weight)
        shape = _constant(f"{node.name}_table_shape", [blocks.rows, blocks.row_bytes])
        table = ir.node("Reshape", [blocks.packed, shape.outputs[0]], name=f"{node.name}_table")
        gather = ir.node(
            "GatherBlockQuantized",
            [table.outputs[0], node.inputs[1], blocks.scales, blocks.zero_points],
            attributes={"gather_axis": 0, "quantize_axis": 1, "block_size": self.record.block_size,
                        "bits": self.record.bits},
            domain=QUANTIZED_DOMAIN,
            name=f"{node.name}_Q{self.record.bits}",
        )  # fmt: skip
        nodes = [shape, table, gather]
        if blocks.columns % self.record.block_size:
            starts, ends = _constant(f"{node.name}_from", [0]), _constant(f"{node.name}_to", [blocks.columns])
            axes = _constant(f"{node.name}_axis", [-1])
            cut = ir.node("Slice", [gather.outputs[0], starts.outputs[0], ends.outputs[0], axes.outputs[0]])
            nodes += [starts, ends, axes, cut]
        return nodes

    def _replace(self, node: ir.Node, nodes: list[ir.Node]) -> None:
        ir.convenience.replace_nodes_and_values(
            self.graph, node, [node], nodes, [node.outputs[0]], [nodes[-1].outputs[0]]
        )

    def _drop_unused(self) -> None:
        """The Transposes that fed a replaced MatMul, and the fp32 weights nothing reads any more."""
        for node in [node for node in self.graph if node.op_type == "Transpose"]:
            source = node.inputs[0]
            if source is not None and source.name in self.blocks and not node.outputs[0].uses():
                self.graph.remove(node, safe=True)
        for name in [name for name in self.blocks if not self.graph.initializers[name].uses()]:
            self.graph.initializers.pop(name)


def quantize_graph(model: ir.Model, precision: str, weights: Collection[str]) -> set[str]:
    """Quantize `model`'s weight MatMuls and embedding Gathers (of `weights`) in place; returns the names
    of the initializers it added."""
    quantizer = WeightQuantizer(model.graph, QuantizationRecord.of(precision), weights)
    quantizer.run()
    if quantizer.added:
        model.opset_imports[QUANTIZED_DOMAIN] = 1
    return quantizer.added


def _gather_axis(node: ir.Node) -> int:
    axis = node.attributes.get("axis")
    return 0 if axis is None else int(axis.as_int())


def _constant(name: str, values: list[int]) -> ir.Node:
    return ir.node("Constant", [], attributes={"value": ir.tensor(np.asarray(values, np.int64))}, name=name)
