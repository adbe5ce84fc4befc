"""torch.onnx.export (dynamo) of a prepared module into one checked ONNX file with external weights."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import onnx
import onnx_ir as ir
import torch
from torch import nn

from ftp_deploy.errors import ExportError
from ftp_deploy.export_format import DATA_FILE, MODEL_FILE
from ftp_deploy.exporters.onnx_ops import TRANSLATIONS
from ftp_deploy.exporters.spec import ExportSpec
from ftp_deploy.plugins.token_compaction.contract import DOMAIN
from ftp_deploy.plugins.token_compaction.onnx_functions import DOMAIN_OPSET, local_functions


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence torch.onnx's warnings and log lines (verbose=False stops its prints); errors still raise."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def export_onnx_file(module: nn.Module, spec: ExportSpec, example: tuple[torch.Tensor, ...], folder: Path) -> Path:
    """Write `folder/model.onnx` (+ `model.onnx.data`, referenced by relative path) and check it."""
    try:
        with _quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                example,
                dynamo=True,
                input_names=list(spec.input_names),
                output_names=list(spec.output_names),
                dynamic_shapes=spec.torch_dynamic_shapes(),
                opset_version=spec.opset,
                custom_translation_table=TRANSLATIONS,
                verbose=False,
            )
    except Exception as err:  # torch.onnx raises many types; all mean the same to the user
        raise ExportError(f"torch.onnx.export failed: {_summary(err)}") from err
    if program is None:  # only the TorchScript path returns None
        raise ExportError("torch.onnx.export returned no program")
    model = program.model
    name_output_axes(model, spec)
    if not spec.dense:
        add_compaction_functions(model, spec.opset)
    path = folder / MODEL_FILE
    ir.save(model, path, external_data=DATA_FILE)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as err:
        raise ExportError(f"the exported graph fails onnx.checker: {_summary(err)}") from err
    return path


def name_output_axes(model: ir.Model, spec: ExportSpec) -> None:
    """The spec's axis names on the graph's outputs (torch.onnx writes its own sympy forms)."""
    for value in model.graph.outputs:
        if value.shape is not None and value.name is not None:
            axes = spec.dynamic_axes[value.name]
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
