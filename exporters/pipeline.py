"""`ftp-deploy export --engine onnx`: run folder -> checked, validated, smoke-run artifact folder."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

import ftp_deploy
from ftp_deploy.artifacts import CONFIG_FILE, RoutedArtifact, load_artifact
from ftp_deploy.engines.onnx_runtime import OrtRunner, SessionFromOnnx
from ftp_deploy.errors import ExportError, UnsupportedExportError
from ftp_deploy.exporters.graphs import cast_weights, export_module
from ftp_deploy.export_format import CPU_NATIVE_DTYPES, write_manifest
from ftp_deploy.exporters.onnx_export import export_onnx_file
from ftp_deploy.exporters.options import DEFAULT_OPSET
from ftp_deploy.exporters.output_folder import check_output_folder, staged_folder
from ftp_deploy.exporters.spec import ExportSpec, sample_inputs
from ftp_deploy.exporters.validation import ValidationReport, validate_export
from ftp_deploy.exporters.widen import widened_to_fp32
from ftp_deploy.fileio import sha256_file
from ftp_deploy.models import load_base_model
from ftp_deploy.plugins.token_compaction.contract import (
    COMPACT_OP,
    DOMAIN,
    OP_VERSION,
    PLUGIN_NAMESPACE,
    SCATTER_OP,
    SPARSITY_DEN,
)

SMOKE_SHAPE = (1, 8)  # batch 1: the export example had 2, so this also exercises the dynamic batch

StepObserver = Callable[[str], AbstractContextManager[object]]
# Adds files to the staged artifact folder before the manifest hashes it; returns manifest entries.
ArtifactExtension = Callable[[Path, dict[str, Any]], dict[str, Any]]


def no_progress(step: str) -> AbstractContextManager[object]:
    return contextlib.nullcontext()


@dataclass
class ExportResult:
    out: Path
    manifest: dict[str, Any]


def export_onnx(
    run_dir: Path,
    out: Path,
    *,
    model: str | None = None,
    dtype: str = "fp32",
    opset: int = DEFAULT_OPSET,
    dense: bool = False,
    last_token_logits: bool = False,
    debug_outputs: bool = False,
    overwrite: bool = False,
    trust_remote_code: bool = False,
    extend: ArtifactExtension | None = None,
    on_step: StepObserver = no_progress,
) -> ExportResult:
    """Export the routed model of `run_dir` (or, with `dense`, its base model) into the folder `out`.

    Bad input raises before anything is written; a failure later leaves no folder behind: the
    artifact is built in a hidden folder beside `out` and renamed to `out` once complete.
    `extend` adds to that folder (a TensorRT plan, say) and to the manifest, before the manifest
    hashes every file.
    """
    check_output_folder(out, overwrite)
    artifact = load_artifact(run_dir)
    spec = ExportSpec(
        artifact.schedule.thousandths,
        dtype=dtype,
        opset=opset,
        dense=dense,
        last_token_logits=last_token_logits,
        debug_outputs=debug_outputs,
    )
    if not dense:
        check_exportable(artifact)
    model_ref = model or artifact.base.ref
    with staged_folder(out) as folder:
        with on_step(f"load the base model ({model_ref})"):
            loaded = load_base_model(model_ref, trust_remote_code=trust_remote_code)
            module = export_module(artifact.build(loaded.model), spec)
        vocab_size = int(loaded.model.config.vocab_size)
        with on_step(f"export {'the dense' if dense else 'the routed'} graph ({dtype}, opset {opset})"):
            path = export_onnx_file(module, spec, spec.example_inputs(vocab_size), folder)
        with on_step("validate against PyTorch"):
            checked: Path | bytes = path
            if dtype != "fp32":
                checked = widened_to_fp32(path).SerializeToString()
                cast_weights(module, "fp32")  # the same rounded weights, computing in fp32 like the copy
            with OrtRunner(SessionFromOnnx(checked)) as runner:
                report = validate_export(runner, module, spec, vocab_size, widened=dtype != "fp32")
        with on_step("smoke inference in ONNX Runtime"):
            native = dtype in CPU_NATIVE_DTYPES
            smoke = {**smoke_inference(path if native else checked, spec, vocab_size), "widened_to_fp32": not native}
        content = _manifest_content(run_dir, artifact, spec, report, smoke, model_ref)
        if extend is not None:
            content.update(extend(folder, content))
        with on_step("write the manifest"):
            manifest = write_manifest(folder, content)
    return ExportResult(out, manifest)


def check_exportable(artifact: RoutedArtifact) -> None:
    if artifact.router_spec.kind == "random":
        raise UnsupportedExportError("the random router is a baseline for experiments and is not exported")
    if artifact.routing_mode != "topk":
        raise UnsupportedExportError(
            f"{artifact.routing_mode} routing keeps a data-dependent number of tokens; the exported graph "
            "needs top-k routing, whose kept counts are shape arithmetic"
        )


def smoke_inference(model: Path | bytes, spec: ExportSpec, vocab_size: int) -> dict[str, Any]:
    """One batch-1 run of the file on ONNX Runtime's CPU provider: declared outputs, right shapes, finite."""
    input_ids, attention_mask = sample_inputs(*SMOKE_SHAPE, vocab_size, seed=7)
    with OrtRunner(SessionFromOnnx(model)) as runner:
        outputs = runner.infer({"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        seconds = runner.last_inference_time()
    logits = outputs.get("logits")
    expected_shape = (SMOKE_SHAPE[0], 1 if spec.last_token_logits else SMOKE_SHAPE[1], vocab_size)
    if list(outputs) != list(spec.output_names):
        raise ExportError(f"smoke inference: the file outputs {list(outputs)}, not {list(spec.output_names)}")
    if logits is None or logits.shape != expected_shape:
        raise ExportError(f"smoke inference: logits have shape {getattr(logits, 'shape', None)}, not {expected_shape}")
    if not bool(np.isfinite(logits.astype(np.float32)).all()):
        raise ExportError("smoke inference: the logits are not all finite")
    return {"provider": "CPUExecutionProvider", "input_shape": list(SMOKE_SHAPE), "seconds": seconds}


def _manifest_content(
    run_dir: Path,
    artifact: RoutedArtifact,
    spec: ExportSpec,
    report: ValidationReport,
    smoke: dict[str, Any],
    model_ref: str,
) -> dict[str, Any]:
    return {
        "engine": "onnx",
        "graph": "dense" if spec.dense else "routed",
        "model_file": "model.onnx",
        "source_run": {
            "path": str(run_dir.resolve()),
            "config_sha256": sha256_file(run_dir / CONFIG_FILE),  # it names the router file's sha256
        },
        "base_model": {**artifact.base.to_json(), "loaded_from": model_ref},
        "schedule": {"sparsity_thousandths": list(spec.thousandths), "sparsity_den": SPARSITY_DEN},
        "router": artifact.router_spec.to_json(),
        "routing_mode": artifact.routing_mode,
        "op_contract": {
            "domain": DOMAIN,
            "ops": [COMPACT_OP, SCATTER_OP],
            "plugin_namespace": PLUGIN_NAMESPACE,
            "plugin_version": OP_VERSION,
        },
        "dtype": spec.dtype,
        "opset": spec.opset,
        "last_token_logits": spec.last_token_logits,
        "debug_outputs": spec.debug_outputs,
        **spec.to_json(),
        "validation": report.to_json(),
        "smoke_inference": smoke,
        "versions": {
            "ftp_deploy": ftp_deploy.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
    }
