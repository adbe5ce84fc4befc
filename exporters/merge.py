"""The generator graph: the prefill and decode graphs under one `If`, so one session holds one copy of the weights.

Two ONNX Runtime sessions over model.onnx and decoder.onnx each load the weights, fold each
`Transpose(W)` into a transposed copy and prepack it for their MatMuls: two copies while generating
(measured on SmolLM2 fp32 after loading: 1307 MiB for the two sessions, 680 MiB for onnxruntime-genai's
one). ORT's Python API cannot share prepacked weights between sessions. Here the weights are
initializers of the outer graph, which both branches read from the enclosing scope; the transposes
move out of the branches too, so ORT folds each once (left in the branches, each folds its own: 1716
MiB). The `decode` input (a bool scalar) picks the branch. Each branch's MatMuls still pack their own
copy unless prepacking is off (624 MiB) or the session reads ORT's prepacked copy (engines/prepacked.py).

Every input is fed at every call, the other branch's with placeholders it never reads (ONNX Runtime's IO
binding does not take inputs that default to initializers). An output that one branch does not compute
(decode's slot masks) is an empty tensor there.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
from onnx_ir.convenience import replace_all_uses_with

from ftp_deploy.errors import ExportError
from ftp_deploy.formats.export_manifest import BRANCH_INPUT, DECODER_FILE, GENERATOR_FILE, MODEL_FILE


def export_generator_file(folder: Path) -> Path:
    """Write `folder/generator.onnx` from the folder's prefill and decode graphs, reading their data file.

    Not passed through onnx.checker: the decode branch's first fused norm is ONNX Runtime's
    SimplifiedLayerNormalization, which onnx does not define (exporters/fusions.py); both graphs were
    checked as files before, and validation runs this one.
    """
    model = merged_generator(ir.load(folder / MODEL_FILE), ir.load(folder / DECODER_FILE))
    path = folder / GENERATOR_FILE
    ir.save(model, path)
    return path


def merged_generator(prefill: ir.Model, decode: ir.Model) -> ir.Model:
    """One model running `prefill` or `decode` (which are consumed), their weights stored once.

    A weight is an initializer both graphs name alike over the same stored bytes (the decode graph
    reads the prefill's data file); each graph's other initializers stay in its branch.
    """
    outer_inputs: dict[str, ir.Value] = {}
    weights: dict[str, ir.Value] = {}
    hoisted: dict[str, ir.Value] = {}
    hoisted_nodes: list[ir.Node] = []
    for graph in (prefill.graph, decode.graph):
        _lift_inputs(graph, outer_inputs)
        _lift_weights(graph, weights, first=graph is prefill.graph)
        hoisted_nodes += _hoist_transposes(graph, set(weights), hoisted)
    flag = ir.Value(name=BRANCH_INPUT, shape=ir.Shape([]), type=ir.TensorType(ir.DataType.BOOL))
    declared = {value.name or "": value for value in (*decode.graph.outputs, *prefill.graph.outputs)}
    shapes = _common_shapes(prefill.graph, decode.graph)
    prefill_names = _output_names(prefill.graph)
    names = [*prefill_names, *(name for name in _output_names(decode.graph) if name not in prefill_names)]
    then_branch = _branch(decode.graph, names, declared, "decode/")
    else_branch = _branch(prefill.graph, names, declared, "prefill/")
    choose = ir.node(
        "If",
        [flag],
        attributes={
            "then_branch": ir.AttrGraph("then_branch", then_branch),
            "else_branch": ir.AttrGraph("else_branch", else_branch),
        },
        num_outputs=len(names),
        name="generator/if",
    )
    for output, name in zip(choose.outputs, names, strict=True):
        output.name, output.type, output.shape = name, declared[name].type, shapes[name]
    graph = ir.Graph(
        [flag, *outer_inputs.values()],
        list(choose.outputs),
        nodes=[*hoisted_nodes, choose],
        initializers=list(weights.values()),
        opset_imports={**decode.opset_imports, **prefill.opset_imports},
        name="ftp_deploy_generator",
    )
    functions = {**decode.functions, **prefill.functions}
    return ir.Model(
        graph,
        ir_version=prefill.ir_version,
        producer_name=prefill.producer_name,
        producer_version=prefill.producer_version,
        functions=list(functions.values()),
    )


def _common_shapes(first: ir.Graph, second: ir.Graph) -> dict[str, ir.Shape]:
    """Each output's shape as both graphs declare it: a dimension they name differently is unknown."""
    shapes: dict[str, ir.Shape] = {}
    for value in (*second.outputs, *first.outputs):
        other = shapes.get(value.name or "")
        dims: list[int | ir.SymbolicDim | None] = list(value.shape) if value.shape is not None else []
        if other is not None and len(other) == len(dims):
            dims = [dim if dim == known else None for dim, known in zip(dims, other, strict=True)]
        shapes[value.name or ""] = ir.Shape(dims)
    return shapes


def _output_names(graph: ir.Graph) -> list[str]:
    return [value.name or "" for value in graph.outputs]


def _lift_inputs(graph: ir.Graph, outer: dict[str, ir.Value]) -> None:
    """The graph's inputs become the outer graph's; an input both graphs take (input_ids) is one value."""
    for value in list(graph.inputs):
        name = value.name or ""
        if name not in outer:
            outer[name] = ir.Value(name=name, shape=value.shape.copy() if value.shape else None, type=value.type)
        replace_all_uses_with(value, outer[name])
    graph.inputs.clear()


def _lift_weights(graph: ir.Graph, weights: dict[str, ir.Value], first: bool) -> None:
    """Move the graph's weights to the outer graph; the second graph's are the first's same bytes, used as such."""
    for name, value in list(graph.initializers.items()):
        if _stored_at(value) is None:
            continue  # a trace constant: the branch's own
        graph.initializers.pop(name)
        if first:
            weights[name] = value
        elif name in weights and _stored_at(value) == _stored_at(weights[name]):
            replace_all_uses_with(value, weights[name])
        else:
            raise ExportError(f"the decode graph's weight {name} is not stored as the prefill graph's")


def _stored_at(value: ir.Value) -> tuple[str, int | None, int | None] | None:
    """Where an external weight's bytes are (file, offset, length); None for a tensor stored in the graph."""
    tensor = value.const_value
    if isinstance(tensor, ir.ExternalTensor):
        return (str(tensor.location), tensor.offset, tensor.length)
    return None


def _hoist_transposes(graph: ir.Graph, weights: set[str], hoisted: dict[str, ir.Value]) -> list[ir.Node]:
    """Each `Transpose(W)` of a 2-D weight moves to the outer graph: one for both branches, which ORT folds once."""
    added = []
    for node in list(graph):
        source = node.inputs[0] if node.op_type == "Transpose" and node.domain == "" and node.inputs else None
        perm = node.attributes.get("perm")
        if source is None or source.name not in weights or (perm is not None and list(perm.value) != [1, 0]):
            continue
        name = source.name or ""
        if name not in hoisted:
            outer = ir.Node("", "Transpose", [source], list(node.attributes.values()), name=f"{name}/transpose")
            outer.outputs[0].name, outer.outputs[0].type = f"{name}.transposed", source.type
            hoisted[name] = outer.outputs[0]
            added.append(outer)
        replace_all_uses_with(node.outputs[0], hoisted[name])
        graph.remove(node, safe=True)
    return added


def _branch(graph: ir.Graph, names: list[str], declared: dict[str, ir.Value], prefix: str) -> ir.Graph:
    """`graph` as an If branch: no inputs, its values prefixed (branches share one namespace), outputs `names`
    (an output it does not compute is an empty tensor of the type and rank `declared` gives)."""
    produced = {value.name: value for value in graph.outputs}
    for name in names:
        if name not in produced:
            produced[name] = _empty_like(graph, declared[name])
    for node in graph:
        node.name = f"{prefix}{node.name}"
        for value in node.outputs:
            value.name = f"{prefix}{value.name}"
    for value in list(graph.initializers.values()):
        value.name = f"{prefix}{value.name}"
    graph.outputs.clear()
    graph.outputs.extend(produced[name] for name in names)
    graph.name = prefix.rstrip("/")
    return graph


def _empty_like(graph: ir.Graph, declared: ir.Value) -> ir.Value:
    """A Constant appended to `graph`: an empty tensor of `declared`'s type and rank."""
    rank = len(declared.shape) if declared.shape is not None else 1
    dtype = declared.dtype or ir.DataType.FLOAT
    empty = ir.tensor(np.zeros([0] * rank, dtype=dtype.numpy()), name=f"{declared.name}/empty")
    node = ir.node("Constant", [], attributes={"value": empty}, name=f"{declared.name}/empty")
    node.outputs[0].name, node.outputs[0].dtype = declared.name, dtype
    node.outputs[0].shape = ir.Shape([0] * rank)
    graph.append(node)
    return node.outputs[0]
