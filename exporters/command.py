"""`ftp-deploy export` (a routed run folder into an ONNX or TensorRT artifact folder) and `ftp-deploy build-plan`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftp_deploy.cli_options import ModelOverrideOption, ReferenceDeviceOption, TrustOption
from ftp_deploy.console import RichProgress, console
from ftp_deploy.engines.trt_profile import DEFAULT_PROFILE, ShapeProfile, format_shape, parse_shape
from ftp_deploy.exporters.options import ATTENTION_FORMS, ENGINE_ATTENTION, ENGINES, SUPPORTED_OPSETS, ExportOptions
from ftp_deploy.formats.export_manifest import QUANTIZED_BITS, TensorRtSection
from ftp_deploy.placement import DTYPE_NAMES


def _shape_help(which: str, default: tuple[int, int]) -> str:
    return f"--engine trt: the {which} BATCH,SEQUENCE of the optimization profile (default {format_shape(default)})"


_EXPORT = ExportOptions()


def export(
    run_dir: Annotated[Path, typer.Argument(help="A routed-model folder (ftp_config.json)")],
    out: Annotated[Path, typer.Option(help="The artifact folder to create (built beside it, then renamed)")],
    engine: Annotated[str, typer.Option(help=f"One of {', '.join(ENGINES)}")] = _EXPORT.engine,
    model: ModelOverrideOption = _EXPORT.model,
    dtype: Annotated[str, typer.Option(help=f"One of {', '.join(DTYPE_NAMES)}")] = _EXPORT.dtype,
    opset: Annotated[int, typer.Option(help=f"ONNX opset: {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]}")] = (
        _EXPORT.opset
    ),
    dense: Annotated[bool, typer.Option(help="Export the unrouted base model instead (the baseline)")] = _EXPORT.dense,
    last_token_logits: Annotated[
        bool, typer.Option(help="Logits for the last position only (prefill)")
    ] = _EXPORT.last_token_logits,
    debug_outputs: Annotated[
        bool, typer.Option(help="Also output each block's kept indices and the hidden state it leaves")
    ] = _EXPORT.debug_outputs,
    with_past: Annotated[
        bool,
        typer.Option(
            help="For generation (Optimum's text-generation-with-past): the prefill also returns every layer's "
            "compacted KV cache, and decoder.onnx continues from it one token at a time; tokenizer included"
        ),
    ] = _EXPORT.with_past,
    quantize: Annotated[
        str | None,
        typer.Option(
            help=f"Weight-only quantization, {' or '.join(QUANTIZED_BITS)}: the base model's weights as blocks of 32 "
            "(ONNX Runtime's MatMulNBits and GatherBlockQuantized), activations fp32; --engine onnx only"
        ),
    ] = _EXPORT.quantize,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out")] = _EXPORT.overwrite,
    trust_remote_code: TrustOption = _EXPORT.trust_remote_code,
    min_shape: Annotated[str | None, typer.Option(help=_shape_help("smallest", DEFAULT_PROFILE.min_shape))] = None,
    opt_shape: Annotated[str | None, typer.Option(help=_shape_help("tuned-for", DEFAULT_PROFILE.opt_shape))] = None,
    max_shape: Annotated[str | None, typer.Option(help=_shape_help("largest", DEFAULT_PROFILE.max_shape))] = None,
    onnx_only: Annotated[
        bool, typer.Option(help="--engine trt: no engine here; write the script that builds it on the target")
    ] = _EXPORT.onnx_only,
    device: ReferenceDeviceOption = _EXPORT.device,
    attention: Annotated[
        str | None,
        typer.Option(
            help=f"The prefill's attention: {' or '.join(ATTENTION_FORMS)} (default: "
            + ", ".join(f"{form} for --engine {engine}" for engine, form in ENGINE_ATTENTION.items())
            + "); fused is ONNX Runtime's GroupQueryAttention, memory linear in the prompt, ONNX Runtime only"
        ),
    ] = _EXPORT.attention,
    triton_repo: Annotated[
        Path | None,
        typer.Option(
            help="Also add the exported graphs to this Triton Inference Server model repository (config.pbtxt, "
            "version 1; with --with-past also the generation models ftp-deploy serve runs; needs the "
            "\\[triton-server] extra)"
        ),
    ] = _EXPORT.triton_repo,
    triton_max_batch: Annotated[
        int, typer.Option(min=1, help="--triton-repo: max_batch_size of the ONNX Runtime model")
    ] = _EXPORT.triton_max_batch,
) -> None:
    """Export a routed model to ONNX: validated against PyTorch and smoke-run before it is kept.

    With --engine trt, also the TensorRT optimization profile and build script, and the engine
    itself where TensorRT and a CUDA GPU are present.
    """
    shapes = {"--min-shape": min_shape, "--opt-shape": opt_shape, "--max-shape": max_shape}
    given = {option: parse_shape(text, option) for option, text in shapes.items() if text is not None}
    options = ExportOptions(
        engine=engine,
        model=model,
        dtype=dtype,
        opset=opset,
        dense=dense,
        last_token_logits=last_token_logits,
        debug_outputs=debug_outputs,
        with_past=with_past,
        quantize=quantize,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
        device=device,
        attention=attention,
        min_shape=given.get("--min-shape"),
        opt_shape=given.get("--opt-shape"),
        max_shape=given.get("--max-shape"),
        onnx_only=onnx_only,
        triton_repo=triton_repo,
        triton_max_batch=triton_max_batch,
    )
    from ftp_deploy.exporters.stage import export as run_export
    from ftp_deploy.placement import memory_errors

    with RichProgress() as progress, memory_errors("--device cpu (the reference then runs on the CPU)"):
        result = run_export(run_dir, out, options, progress)
    manifest, validation = result.manifest, result.manifest.validation
    precision = dtype if manifest.quantization is None else f"{manifest.quantization.precision}-weight"
    console.print(f"exported {manifest.graph} {precision} ONNX to {result.out}")
    console.print(
        f"validated at lengths {list(validation.lengths)}: logits max |diff| {validation.logits_max_abs_diff:.2e}"
        + (
            f", routing agreement {validation.routing_agreement:.2%}"
            if validation.routing_agreement is not None
            else ""
        )
    )
    for name in manifest.files:
        console.print(f"  {result.out / name}")
    if manifest.tensorrt is not None:
        _print_engine_commands(result.out, manifest.tensorrt)
    if result.triton_configs:
        console.print(
            f"Triton model repository {triton_repo} (ftp-deploy serve runs its generation models; "
            "the onnxruntime / TensorRT ones need NVIDIA's server container):"
        )
        for path in result.triton_configs:
            console.print(f"  {path}", markup=False, highlight=False, soft_wrap=True)


def _print_engine_commands(out: Path, section: TensorRtSection) -> None:
    from ftp_deploy.exporters.trt_export import engine_commands

    build, benchmark = engine_commands(ShapeProfile.from_record(section.profile), out.resolve()).shell()
    if section.plan_file is None or section.built_for is None:
        console.print(
            "build the TensorRT engine on the target machine (NVIDIA GPU, TensorRT >= 10.9, "
            "pip install 'ftp-deploy[trt]'; trtexec cannot build it: its plugins are Python plugins):",
            markup=False,
        )
        console.print(f"  {build}", markup=False, highlight=False, soft_wrap=True)
    else:
        built = section.built_for
        console.print(f"built {out / section.plan_file} for {built.gpu} (TensorRT {built.tensorrt})")
    console.print("time the engine with trtexec:", markup=False)
    console.print(f"  {benchmark}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"({out / section.build_script} runs both)", markup=False, highlight=False)


def build_plan(
    art_dir: Annotated[Path, typer.Argument(help="An artifact folder exported with --engine trt --onnx-only")],
    timing_cache: Annotated[
        Path | None, typer.Option(help="TensorRT timing cache file (default: one per TensorRT release and GPU)")
    ] = None,
) -> None:
    """Build the TensorRT engine (model.plan) of an exported artifact on this machine's GPU, in place."""
    from ftp_deploy.engines.build_plan import build_artifact_plan
    from ftp_deploy.formats.plan_manifest import PLAN_FILE

    plan = build_artifact_plan(art_dir, timing_cache)
    console.print(
        f"built {art_dir / PLAN_FILE} for {plan.environment.describe()} ({plan.plugin_implementation} plugins)",
        markup=False,
        highlight=False,
    )
