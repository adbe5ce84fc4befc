"""`ftp-deploy export --engine onnx`: run folder -> checked, validated, smoke-run artifact folder."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

import ftp_deploy
from ftp_deploy.artifacts import RoutedArtifact, load_artifact, load_routed
from ftp_deploy.comparison.dequantize import use_stored_weights
from ftp_deploy.engines.onnx_runtime import OrtRunner, SessionFromOnnx
from ftp_deploy.engines.widen import fp32_copy
from ftp_deploy.errors import ExportError, UnsupportedExportError
from ftp_deploy.exporters.attention import GQA_HEAD_MULTIPLE, fused_attention_fits
from ftp_deploy.exporters.graphs import cast_weights, export_module
from ftp_deploy.exporters.merge import export_generator_file
from ftp_deploy.exporters.onnx_export import export_decoder_file, export_onnx_file
from ftp_deploy.exporters.options import ENGINE_ATTENTION, ExportOptions
from ftp_deploy.exporters.output_folder import check_output_folder, remove_stale_staging, staged_folder
from ftp_deploy.exporters.spec import DecodeSpec, ExportSpec, sample_inputs
from ftp_deploy.exporters.validation import validate_decode, validate_export
from ftp_deploy.fileio import sha256_file, storage
from ftp_deploy.formats.export_manifest import (
    BRANCH_INPUT,
    DATA_FILE,
    DECODER_FILE,
    GENERATOR_FILE,
    MODEL_FILE,
    BaseModelRecord,
    ExportManifest,
    GraphRecord,
    QuantizationRecord,
    ScheduleRecord,
    SourceRun,
    ValidationRecord,
    WithPastRecord,
    prefill_runtimes,
    write_manifest,
)
from ftp_deploy.formats.record import to_json
from ftp_deploy.formats.routed_config import CONFIG_FILE
from ftp_deploy.placement import place_module, resolve_placement
from ftp_deploy.plugins.token_compaction.contract import (
    COMPACT_OP,
    DOMAIN,
    OP_VERSION,
    PLUGIN_NAMESPACE,
    SCATTER_OP,
    SPARSITY_DEN,
)
from ftp_deploy.progress import NO_PROGRESS, Progress

SMOKE_SHAPE = (1, 8)  # batch 1: the export example had 2, so this also exercises the dynamic batch

# Adds files to the staged artifact folder before the manifest hashes it; returns the manifest to write.
ArtifactExtension = Callable[[Path, ExportManifest], ExportManifest]


@dataclass
class ExportResult:
    out: Path
    manifest: ExportManifest


def export_onnx(
    run_dir: Path,
    out: Path,
    options: ExportOptions | None = None,
    *,
    extend: ArtifactExtension | None = None,
    progress: Progress = NO_PROGRESS,
    **fields: Any,
) -> ExportResult:
    """Export the routed model of `run_dir` (or, with `dense`, its base model) into the folder `out`.

    `options` (default ExportOptions()) with any of its `fields` given by name replaced, so
    `export_onnx(run, out, dense=True)` reads as the command line does.
    Bad input raises before anything is written; a failure later leaves no folder behind: the
    artifact is built in a hidden folder beside `out` and renamed to `out` once complete.
    `extend` adds to that folder (a TensorRT plan, say) and to the manifest, before the manifest
    hashes every file.
    """
    opts = replace(options or ExportOptions(), **fields)
    reference_device = resolve_placement(opts.device).device  # a bad --device fails before anything runs
    check_output_folder(out, opts.overwrite)
    for stale in remove_stale_staging(out):
        progress.note(f"removed {stale}: the staging folder of an earlier export to {out} that was interrupted")
    artifact = load_artifact(run_dir)
    graph_options = {
        **opts.graph(),
        "last_token_logits": opts.last_token_logits or opts.with_past,
        "attention": opts.attention or ENGINE_ATTENTION[opts.engine],
    }
    spec = ExportSpec(thousandths=artifact.schedule.thousandths, **graph_options)
    if not opts.dense:
        check_exportable(artifact)
    model_ref = opts.model or artifact.base.ref
    # A full disk midway is exit 1: the staged folder goes, so nothing half-written stays behind.
    with storage(out, "nothing was written there"), staged_folder(out) as folder:
        with progress.phase(f"load the base model ({model_ref})"):
            routed, loaded, _ = load_routed(artifact, model_ref, trust_remote_code=opts.trust_remote_code)
            first: Any = routed.layers[0]
            spec = _fitting_attention(spec, int(first.self_attn.head_dim), opts.attention, progress)
            module = export_module(routed, spec)
        vocab_size = int(loaded.model.config.vocab_size)
        graph = "the dense" if opts.dense else "the routed"
        with progress.phase(f"export {graph} graph ({opts.dtype}, opset {opts.opset})"):
            path = export_onnx_file(routed, spec, vocab_size, folder)
        quantization = QuantizationRecord.of(opts.quantize) if opts.quantize is not None else None
        decode = DecodeSpec(spec.num_layers, spec.decode_cache) if spec.with_past else None
        with_past = None
        if decode is not None:
            with progress.phase("export the decode graph, save the tokenizer"):
                export_decoder_file(routed, spec, decode, folder)
                if decode.inplace:  # what generation runs: both graphs in one session, one copy of the weights
                    export_generator_file(folder)
                with_past = _with_past_record(loaded, spec, folder)
        with progress.phase("validate against PyTorch, smoke inference in ONNX Runtime"):
            # The file's fp32-arithmetic copy against the module holding the file's weights in fp32: the same
            # rounded weights, or a quantized file's own blocks dequantized.
            checked = fp32_copy(path, opts.dtype, quantization is not None)
            if opts.dtype != "fp32":
                cast_weights(module, "fp32")
            if quantization is not None:
                use_stored_weights(routed.base, path, quantization)
            place_module(module, reference_device)  # traced on the CPU; the reference runs on --device
            # One session serves validation and the smoke run: Polygraphy's Comparator activates and
            # deactivates its runner, the session outlives that. ONNX Runtime's CPU provider runs an
            # fp16 file natively, so that file gets a session of its own.
            session = SessionFromOnnx(checked)()
            validation = validate_export(
                OrtRunner(lambda: session), module, spec, vocab_size, widened=opts.dtype != "fp32"
            )
            # The shipped quantized file runs too: its int8-activation arithmetic is not the copy's.
            smoke_session = SessionFromOnnx(path)() if opts.dtype == "fp16" or quantization is not None else session
            smoke = {**smoke_inference(smoke_session, spec, vocab_size), "widened_to_fp32": opts.dtype == "bf16"}
        if with_past is not None:
            with progress.phase("validate decoding against PyTorch's cached decode"):
                validation = validate_decode(
                    folder, with_past, routed, spec, vocab_size, validation, quantized=quantization is not None
                )
        manifest = _manifest(run_dir, artifact, spec, validation, smoke, model_ref, with_past)
        if extend is not None:
            manifest = extend(folder, manifest)
        with progress.phase("write the manifest"):
            manifest = write_manifest(folder, manifest)
    return ExportResult(out, manifest)


def _with_past_record(loaded: Any, spec: ExportSpec, folder: Path) -> WithPastRecord:
    """Save the tokenizer (with its chat template) and generation config beside the graphs, so the
    folder alone can generate; returns what the generator needs to know."""
    before = {path.name for path in folder.iterdir()}
    loaded.tokenizer.save_pretrained(folder)
    loaded.model.generation_config.save_pretrained(folder)
    written = sorted({path.name for path in folder.iterdir()} - before)
    config = loaded.model.config
    eos = loaded.model.generation_config.eos_token_id
    if eos is None:
        eos = loaded.tokenizer.eos_token_id
    eos_ids = tuple(int(i) for i in (eos if isinstance(eos, list) else [] if eos is None else [eos]))
    pad = loaded.tokenizer.pad_token_id
    layer = loaded.model.model.layers[0]
    return WithPastRecord(
        num_layers=spec.num_layers,
        kv_heads=int(config.num_key_value_heads),
        head_dim=int(layer.self_attn.head_dim),
        max_positions=int(config.max_position_embeddings),
        eos_token_ids=eos_ids,
        pad_token_id=int(pad if pad is not None else (eos_ids[0] if eos_ids else 0)),
        tokenizer_files=tuple(written),
        cache=spec.decode_cache,
    )


def _fitting_attention(spec: ExportSpec, head_dim: int, asked: str | None, progress: Progress) -> ExportSpec:
    """The spec with an attention form the model's heads fit: the fused default becomes standard ops
    (said) for a head size GroupQueryAttention refuses; an explicit --attention fused is refused."""
    if spec.attention != "fused" or fused_attention_fits(head_dim):
        return spec
    why = f"ONNX Runtime's GroupQueryAttention needs a head size that is a multiple of {GQA_HEAD_MULTIPLE}"
    why += f", not {head_dim}"
    if asked == "fused":
        raise UnsupportedExportError(f"--attention fused: {why}")
    progress.note(f"the prefill's attention is written in standard ops: {why}")
    return replace(spec, attention="standard")


def check_exportable(artifact: RoutedArtifact) -> None:
    if artifact.router_spec.kind == "random":
        raise UnsupportedExportError("the random router is a baseline for experiments and is not exported")
    if artifact.routing_mode == "threshold":
        raise UnsupportedExportError(
            "threshold routing keeps a data-dependent number of tokens; the exported graph needs top-k "
            "(or monotone) routing, whose kept counts are shape arithmetic"
        )


def smoke_inference(session: onnxruntime.InferenceSession, spec: ExportSpec, vocab_size: int) -> dict[str, Any]:
    """One batch-1 run on ONNX Runtime's CPU provider: declared outputs, right shapes, finite."""
    input_ids, attention_mask = sample_inputs(*SMOKE_SHAPE, vocab_size, seed=7)
    with OrtRunner(lambda: session) as runner:
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


def _manifest(
    run_dir: Path,
    artifact: RoutedArtifact,
    spec: ExportSpec,
    validation: ValidationRecord,
    smoke: dict[str, Any],
    model_ref: str,
    with_past: WithPastRecord | None = None,
) -> ExportManifest:
    axes = spec.to_json()
    runtimes = prefill_runtimes(spec.attention)
    graphs = {"prefill": GraphRecord(MODEL_FILE, DATA_FILE, axes["inputs"], axes["outputs"], runtimes=runtimes)}
    if with_past is not None:  # in place through GroupQueryAttention where the prefill's attention is fused
        decode = DecodeSpec(spec.num_layers, with_past.cache).to_json()
        graphs["decode"] = GraphRecord(DECODER_FILE, DATA_FILE, decode["inputs"], decode["outputs"], runtimes=runtimes)
        if with_past.inplace:  # both graphs' tensors, each under its own name (exporters/merge.py)
            inputs = {BRANCH_INPUT: {}, **axes["inputs"], **decode["inputs"]}
            outputs = {**decode["outputs"], **axes["outputs"]}
            graphs["generate"] = GraphRecord(GENERATOR_FILE, DATA_FILE, inputs, outputs, runtimes=runtimes)
    return ExportManifest(
        engine="onnx",
        graph="dense" if spec.dense else "routed",
        # The run's config names the router file's sha256, so its hash pins the router too.
        source_run=SourceRun(str(run_dir.resolve()), sha256_file(run_dir / CONFIG_FILE)),
        base_model=BaseModelRecord(**to_json(artifact.base), loaded_from=model_ref),
        schedule=ScheduleRecord(spec.thousandths, SPARSITY_DEN),
        router=artifact.router_record(),
        routing_mode=artifact.routing_mode,
        op_contract={
            "domain": DOMAIN,
            "ops": [COMPACT_OP, SCATTER_OP],
            "plugin_namespace": PLUGIN_NAMESPACE,
            "plugin_version": OP_VERSION,
        },
        dtype=spec.dtype,
        opset=spec.opset,
        last_token_logits=spec.last_token_logits,
        debug_outputs=spec.debug_outputs,
        attention=spec.attention,
        inputs=axes["inputs"],
        outputs=axes["outputs"],
        tolerance=axes["tolerance"],
        validation=validation,
        smoke_inference=smoke,
        versions={
            "ftp_deploy": ftp_deploy.__version__,
            "torch": torch.__version__,
            "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__,
        },
        graphs=graphs,
        with_past=with_past,
        quantization=QuantizationRecord.of(spec.quantize) if spec.quantize is not None else None,
    )
