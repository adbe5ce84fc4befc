"""One checked ONNX file with external weights: small pieces traced with torch.onnx (dynamo), stitched per layer."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import onnx
import onnx_ir as ir
import onnxscript.optimizer
import torch
from onnx_ir.tensor_adapters import TorchTensor
from torch import nn

from ftp_deploy.errors import ExportError
from ftp_deploy.exporters.attention import RotaryTables
from ftp_deploy.exporters.fusions import fuse_normalizations
from ftp_deploy.exporters.onnx_ops import TRANSLATIONS
from ftp_deploy.exporters.pieces import (
    BLOCK_HIDDEN,
    BLOCK_INDICES,
    BLOCK_SPARSITY,
    ROTARY_TABLES,
    SENTINEL_SPARSITY_NUM,
    BlockIO,
    DecodeBlock,
    DecodePrologue,
    DenseBlock,
    Epilogue,
    InPlaceDecodeBlock,
    Prologue,
    RoutedBlock,
)
from ftp_deploy.exporters.quantize import quantize_graph
from ftp_deploy.exporters.spec import (
    BATCH,
    SEQUENCE,
    DecodeSpec,
    ExportSpec,
    capacity_axis_name,
    hidden_name,
    indices_name,
    past_axis_name,
)
from ftp_deploy.exporters.stitch import GraphAssembler, LayerRewrite, WeightResolver, check_sentinel_confined
from ftp_deploy.formats.export_manifest import (
    CACHE_PARTS,
    DATA_FILE,
    DECODER_FILE,
    MODEL_FILE,
    past_name,
    present_name,
)
from ftp_deploy.plugins.token_compaction.contract import DOMAIN
from ftp_deploy.plugins.token_compaction.onnx_functions import DOMAIN_OPSET, local_functions
from ftp_deploy.routed_model import RoutedModel

# torch.onnx and the optimizer and fusion passes it brings log every folded or skipped node (onnx-ir's
# with a stack, which reads like a traceback on a user's terminal).
_EXPORT_LOGGERS = ("torch.onnx", "onnxscript", "onnx_ir")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence torch.onnx's and the ONNX passes' warnings and log lines (verbose=False stops torch.onnx's
    prints); errors still raise."""
    loggers = [logging.getLogger(name) for name in _EXPORT_LOGGERS]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def export_onnx_file(routed: RoutedModel, spec: ExportSpec, vocab_size: int, folder: Path) -> Path:
    """Write `folder/model.onnx` (+ `model.onnx.data`, referenced by relative path) and check it.

    `routed` has been prepared by `export_module` (ONNX-emitting ops, eager attention, dtype).
    """
    model = stitched_model(routed, spec, vocab_size)
    name_output_axes(model, spec)
    if spec.quantize is not None:
        quantize_graph(model, spec.quantize, quantizable_weights(routed))
    if not spec.dense:
        add_compaction_functions(model, spec.opset)
    path = folder / MODEL_FILE
    ir.save(model, path, external_data=DATA_FILE)
    _check(path)
    return path


def export_decoder_file(routed: RoutedModel, spec: ExportSpec, decode: DecodeSpec, folder: Path) -> Path:
    """Write `folder/decoder.onnx`, the decode graph, reading its weights from the prefill's data file.

    Every weight the decode graph uses is one of the prefill graph's, stored under the same name,
    so the decoder references those bytes (same offsets) instead of a second copy.
    """
    model = stitched_decoder(routed, spec, decode)
    name_axes(model, decode.dynamic_axes)
    stored = ir.load(folder / MODEL_FILE).graph.initializers
    # Only the model's own tensors: a trace constant ("block/val_102") may share a name, not a value.
    weights = set(_WeightNames(routed).by_tensor.values())
    if spec.quantize is not None:  # the same blocks as the prefill's, under the same names
        weights |= quantize_graph(model, spec.quantize, quantizable_weights(routed))
    for name, value in model.graph.initializers.items():
        shared = stored.get(name)
        if name in weights and shared is not None and shared.const_value is not None:
            if shared.shape != value.shape or shared.dtype != value.dtype:
                raise ExportError(f"the decode graph's {name} differs in shape or type from the prefill graph's")
            value.const_value = shared.const_value
    path = folder / DECODER_FILE
    ir.save(model, path)
    _check(path)
    if decode.inplace:  # ONNX Runtime's graph: its fused norms too (exporters/fusions.py), checked in ORT
        with _quiet_exporter():
            fuse_normalizations(model)
        ir.save(model, path)
    return path


def _check(path: Path) -> None:
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"the exported graph {path.name} fails onnx.checker: {_summary(err)}") from err


def stitched_model(routed: RoutedModel, spec: ExportSpec, vocab_size: int) -> ir.Model:
    """Trace prologue, one block and epilogue once each, then stitch the block in for every layer."""
    input_ids, attention_mask = spec.example_inputs(vocab_size)
    dense = spec.dense
    prologue = Prologue(routed, dense, learned=routed.router is not None and not dense)
    with torch.no_grad():
        facts = dict(zip(prologue.output_names, prologue(input_ids, attention_mask), strict=True))
    # An fp16/bf16 graph stays unfolded: folding would bake constants rounded to that type into the
    # file, which the fp32-widened copy that validation runs cannot undo, so validation could no
    # longer tell the graph's structure from its rounding. Runtimes fold the same casts at load.
    pieces = _PieceTracer(spec.opset, optimize=spec.dtype == "fp32")
    prologue_graph = pieces.trace(
        prologue, {"input_ids": input_ids, "attention_mask": attention_mask}, prologue.output_names
    )
    block_module: RoutedBlock | DenseBlock = (
        DenseBlock(routed.layers[0], spec.with_past) if dense else RoutedBlock(routed, routed.layers[0], spec.with_past)
    )
    # The example sparsity is a placeholder: each layer's own value is bound when stitching.
    known = {**facts, "attention_mask": attention_mask, BLOCK_SPARSITY: torch.tensor(0.0)}
    block_example = {name: known[name] for name in block_module.io.inputs}
    block_graph = pieces.trace(block_module, block_example, output_names=block_module.io.outputs)
    epilogue = Epilogue(routed, spec.last_token_logits)
    epilogue_graph = pieces.trace(epilogue, {BLOCK_HIDDEN: facts[BLOCK_HIDDEN]}, output_names=("logits",))
    if not dense:
        check_sentinel_confined(block_graph, SENTINEL_SPARSITY_NUM)
    return _stitch(routed, spec, prologue, prologue_graph, block_module, block_graph, epilogue, epilogue_graph)


def _stitch(
    routed: RoutedModel,
    spec: ExportSpec,
    prologue: Prologue,
    prologue_graph: ir.Model,
    block: RoutedBlock | DenseBlock,
    block_graph: ir.Model,
    epilogue: Epilogue,
    epilogue_graph: ir.Model,
) -> ir.Model:
    names = _WeightNames(routed)
    assembler = GraphAssembler()
    inputs = [
        ir.Value(name=name, shape=ir.Shape([BATCH, SEQUENCE]), type=ir.TensorType(ir.DataType.INT64))
        for name in spec.input_names
    ]
    bound = dict(zip(spec.input_names, inputs, strict=True))
    state = assembler.instantiate(prologue_graph, bound, names.resolver(prologue, "prologue/"), "prologue/")
    debug: list[tuple[ir.Value, ir.Value]] = []
    present: list[ir.Value] = []
    for index, layer in enumerate(routed.layers):
        block_inputs = {**state, **bound}
        rewrite = None
        if isinstance(block, RoutedBlock):
            rewrite = LayerRewrite(SENTINEL_SPARSITY_NUM, spec.thousandths[index])
            if block.learned:
                sparsity = torch.tensor(routed.schedule.sparsities[index], dtype=torch.float32)
                block_inputs[BLOCK_SPARSITY] = assembler.initializer(
                    f"model.layers.{index}.required_sparsity", sparsity
                )
        prefix = f"layers.{index}/"
        outputs = assembler.instantiate(
            block_graph, block_inputs, names.layer_resolver(block, layer, prefix), prefix, rewrite
        )
        state = {**state, **BlockIO.carried(outputs)}
        present += _present_outputs(outputs, index, CACHE_PARTS) if spec.with_past else []
        if spec.debug_outputs:
            debug.append((outputs[BLOCK_INDICES], state[BLOCK_HIDDEN]))
    logits = assembler.instantiate(
        epilogue_graph, {BLOCK_HIDDEN: state[BLOCK_HIDDEN]}, names.resolver(epilogue, "epilogue/"), "epilogue/"
    )["logits"]
    outputs = [logits, *present]
    logits.name = "logits"
    for index, (indices, hidden) in enumerate(debug):
        indices.name, hidden.name = indices_name(index), hidden_name(index)
    outputs += [indices for indices, _ in debug] + [hidden for _, hidden in debug]
    return assembler.model(inputs, outputs, template=block_graph)


def _present_outputs(outputs: dict[str, ir.Value], layer: int, parts: tuple[str, ...]) -> list[ir.Value]:
    """A block copy's cache outputs, renamed as graph outputs of layer `layer`."""
    values = []
    for part in parts:
        value = outputs[f"present_{part}"]
        value.name = present_name(layer, part)
        values.append(value)
    return values


def stitched_decoder(routed: RoutedModel, spec: ExportSpec, decode: DecodeSpec) -> ir.Model:
    """The decode graph: its prologue, the decode block once per layer, the epilogue; traced once each."""
    batch, past = decode.example_batch, decode.example_past
    layer: Any = routed.layers[0]
    kv_heads, head_dim = int(routed.base.config.num_key_value_heads), int(layer.self_attn.head_dim)
    dtype = layer.self_attn.q_proj.weight.dtype
    generator = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, 8, (batch, 1), generator=generator)
    position_ids = torch.tensor([[past], [past - 2]]).expand(batch, 1).contiguous()
    prologue = DecodePrologue(routed, rotary=not decode.inplace)
    with torch.no_grad():
        carried = dict(zip(prologue.output_names, prologue(input_ids, position_ids), strict=True))
    pieces = _PieceTracer(spec.opset, optimize=spec.dtype == "fp32")
    batch_dim, past_dim = torch.export.Dim(BATCH), torch.export.Dim("past_sequence")
    prologue_graph = pieces.trace(
        prologue,
        {"input_ids": input_ids, "position_ids": position_ids},
        prologue.output_names,
        dynamic=({0: batch_dim}, {0: batch_dim}),
    )
    # Concat: `past` cached slots, the second row's first two padding. In place: buffers of `past` slots
    # whose rows hold 3 and 2 entries, and the rotary tables of every position.
    cache_example: dict[str, torch.Tensor] = {
        "past_key": torch.randn(batch, kv_heads, past, head_dim, generator=generator).to(dtype),
        "past_value": torch.randn(batch, kv_heads, past, head_dim, generator=generator).to(dtype),
    }
    block: InPlaceDecodeBlock | DecodeBlock
    tables: dict[str, torch.Tensor] = {}
    if decode.inplace:
        # Stored in fp32 (as the model computes them) and cast in the graph: a narrower file's fp32-widened
        # copy, which validation runs, then rotates exactly as PyTorch does.
        rotary = RotaryTables.of(routed.base.model.rotary_emb, int(routed.base.config.max_position_embeddings))
        tables = dict(zip(ROTARY_TABLES, (rotary.cos, rotary.sin), strict=True))
        cache_example["past_length"] = torch.tensor([past - 2, past - 3], dtype=torch.int32)
        block = InPlaceDecodeBlock(layer)
        example = {
            **carried,
            "position_ids": position_ids,
            **{k: t.to(dtype) for k, t in tables.items()},
            **cache_example,
        }
        dynamic: tuple[dict[int, Any] | None, ...] = (
            {0: batch_dim},
            {0: batch_dim},
            None,
            None,
            {0: batch_dim, 2: past_dim},
            {0: batch_dim, 2: past_dim},
            {0: batch_dim},
        )
    else:
        valid = torch.ones(batch, past, dtype=torch.bool)
        valid[1, :2] = False
        cache_example["past_valid"] = valid
        block = DecodeBlock(layer)
        example = {**carried, **cache_example}
        cache_axes = {0: batch_dim, 2: past_dim}
        dynamic = ({0: batch_dim}, {0: batch_dim}, {0: batch_dim}, cache_axes, cache_axes, {0: batch_dim, 1: past_dim})
    block_graph = pieces.trace(block, example, block.io.outputs, dynamic=dynamic)
    epilogue = Epilogue(routed, last_token_logits=False)
    hidden = carried[BLOCK_HIDDEN]
    epilogue_graph = pieces.trace(epilogue, {BLOCK_HIDDEN: hidden}, ("logits",), dynamic=({0: batch_dim},))

    names = _WeightNames(routed)
    assembler = GraphAssembler()
    inputs = [
        ir.Value(name=name, shape=ir.Shape([BATCH, 1]), type=ir.TensorType(ir.DataType.INT64))
        for name in ("input_ids", "position_ids")
    ]
    state = assembler.instantiate(
        prologue_graph,
        dict(zip(("input_ids", "position_ids"), inputs, strict=True)),
        names.resolver(prologue, "decode_prologue/"),
        "decode_prologue/",
    )
    if decode.inplace:  # the blocks read the positions and one pair of rotary tables
        state = {**state, "position_ids": inputs[1]}
        for name, table in tables.items():
            stored = assembler.initializer(f"rotary.{name}", table)
            state[name] = stored if dtype == torch.float32 else assembler.cast(stored, _ir_dtype(dtype))
    present: list[ir.Value] = []
    axes = decode.dynamic_axes
    for index, routed_layer in enumerate(routed.layers):
        length = (capacity_axis_name if decode.inplace else past_axis_name)(index)
        past_inputs = {}
        for part in decode.past_parts:
            tensor = cache_example[f"past_{part}"]
            shape = [axes[past_name(index, part)].get(axis, size) for axis, size in enumerate(tensor.shape)]
            value = ir.Value(
                name=past_name(index, part),
                shape=ir.Shape(shape),
                type=ir.TensorType(_ir_dtype(tensor.dtype)),
            )
            inputs.append(value)
            past_inputs[f"past_{part}"] = value
        prefix = f"decode_layers.{index}/"
        outputs = assembler.instantiate(
            block_graph,
            {**state, **past_inputs},
            names.layer_resolver(block, routed_layer, prefix),
            prefix,
            rename=lambda dim, length=length: dim.replace("past_sequence", length),
        )
        state = {**state, **BlockIO.carried(outputs)}
        present += _present_outputs(outputs, index, decode.present_parts)
    logits = assembler.instantiate(
        epilogue_graph, {BLOCK_HIDDEN: state[BLOCK_HIDDEN]}, names.resolver(epilogue, "epilogue/"), "epilogue/"
    )["logits"]
    logits.name = "logits"
    return assembler.model(inputs, [logits, *present], template=block_graph)


class _PieceTracer:
    """torch.onnx.export of one small module, its weights turned into inputs, then (fp32) optimized."""

    def __init__(self, opset: int, optimize: bool) -> None:
        self.opset = opset
        self.optimize = optimize

    def trace(
        self,
        module: nn.Module,
        example: dict[str, torch.Tensor],
        output_names: tuple[str, ...],
        dynamic: tuple[dict[int, Any] | None, ...] | None = None,
    ) -> ir.Model:
        """`dynamic` names the dynamic axes of each input (default: [B, T, ...] or the dense mask's)."""
        names = list(example)
        if dynamic is None:
            batch, sequence = torch.export.Dim(BATCH), torch.export.Dim(SEQUENCE)
            dynamic = tuple(_dynamic_axes(tensor, batch, sequence) for tensor in example.values())
        try:
            with _quiet_exporter(), torch.no_grad():
                program = torch.onnx.export(
                    module,
                    tuple(example.values()),
                    dynamo=True,
                    input_names=names,
                    output_names=list(output_names),
                    dynamic_shapes=dynamic,
                    opset_version=self.opset,
                    custom_translation_table=TRANSLATIONS,
                    optimize=False,
                    verbose=False,
                )
        except Exception as err:  # torch.onnx raises many types; all mean the same to the user
            raise ExportError(f"torch.onnx.export failed on {type(module).__name__}: {_summary(err)}") from err
        if program is None:  # only the TorchScript path returns None
            raise ExportError("torch.onnx.export returned no program")
        model = program.model
        _weights_to_inputs(model, module)
        if self.optimize:  # folding one small piece takes a second; the stitched graph, minutes
            with _quiet_exporter():
                onnxscript.optimizer.optimize(model)
        return model


def _weights_to_inputs(model: ir.Model, module: nn.Module) -> None:
    """The module's parameters and buffers become inputs of the piece's graph.

    The optimizer then folds only what is the same for every layer (it cannot fold a layer-0
    weight into a constant), and the stitcher binds each copy's inputs to its layer's weights.
    """
    graph = model.graph
    for name in [name for name in graph.initializers if _module_tensor(module, name) is not None]:
        value = graph.initializers.pop(name)
        value.const_value = None
        graph.inputs.append(value)


def _dynamic_axes(tensor: torch.Tensor, batch: torch.export.Dim, sequence: torch.export.Dim) -> dict[int, Any] | None:
    """Batch and sequence axes of a piece's input: [B, T, ...]."""
    if tensor.dim() == 0:
        return None
    return {0: batch, 1: sequence}


class _WeightNames:
    """Initializers named as the PyTorch model names its parameters, so a tied weight is stored once."""

    def __init__(self, routed: RoutedModel) -> None:
        named = [*routed.named_parameters(remove_duplicate=True), *routed.named_buffers(remove_duplicate=True)]
        self.by_tensor = {id(tensor): name.removeprefix("base.") for name, tensor in named}

    def resolver(self, module: nn.Module, prefix: str) -> WeightResolver:
        def resolve(name: str, traced: ir.TensorProtocol | None) -> tuple[str, torch.Tensor | ir.TensorProtocol]:
            tensor = _module_tensor(module, name)
            if tensor is not None and id(tensor) in self.by_tensor:
                return self.by_tensor[id(tensor)], tensor
            if traced is None:
                raise ExportError(f"stitching {prefix}: nothing is bound to the piece's input {name!r}")
            return f"{prefix}{name}", traced  # a constant of the trace itself

        return resolve

    def layer_resolver(self, block: nn.Module, layer: nn.Module, prefix: str) -> WeightResolver:
        """The traced block's weights (of layer 0) swapped for `layer`'s; other tensors shared."""
        shared = self.resolver(block, "block/")

        def resolve(name: str, traced: ir.TensorProtocol | None) -> tuple[str, torch.Tensor | ir.TensorProtocol]:
            if name.startswith("layer."):
                tensor = _module_tensor(layer, name.removeprefix("layer."))
                if tensor is None or id(tensor) not in self.by_tensor:
                    raise ExportError(f"stitching {prefix}: the layer has no tensor {name!r}")
                return self.by_tensor[id(tensor)], tensor
            return shared(name, traced)

        return resolve


def quantizable_weights(routed: RoutedModel) -> set[str]:
    """The base model's Linear and embedding weights, as the graph names them (the router stays fp32)."""
    names = _WeightNames(routed).by_tensor
    modules = [module for module in routed.base.modules() if isinstance(module, (nn.Linear, nn.Embedding))]
    return {names[id(module.weight)] for module in modules}


def _module_tensor(module: nn.Module, name: str) -> torch.Tensor | None:
    for getter in (module.get_parameter, module.get_buffer):
        try:
            return getter(name)
        except AttributeError:
            continue
    return None


def name_output_axes(model: ir.Model, spec: ExportSpec) -> None:
    """The spec's axis names on the graph's outputs (torch.onnx writes its own sympy forms)."""
    name_axes(model, spec.dynamic_axes)


def name_axes(model: ir.Model, dynamic_axes: dict[str, dict[int, str]]) -> None:
    for value in model.graph.outputs:
        if value.shape is not None and value.name is not None:
            axes = dynamic_axes[value.name]
            value.shape = ir.Shape([axes.get(axis, dim) for axis, dim in enumerate(value.shape)])


def add_compaction_functions(model: ir.Model, opset: int) -> None:
    """The model-local functions that let ONNX Runtime run the `ftp` nodes with standard ops."""
    for proto in local_functions(opset):
        function = ir.serde.deserialize_function(proto)
        model.functions[function.identifier()] = function
    model.opset_imports[DOMAIN] = DOMAIN_OPSET


def _summary(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _ir_dtype(dtype: torch.dtype) -> ir.DataType:
    """The ONNX element type of a torch dtype (bf16 included, which numpy has not)."""
    return TorchTensor(torch.empty((), dtype=dtype)).dtype
