"""`ftp-deploy export`: a routed run folder into an ONNX (or TensorRT) artifact folder, with progress on stderr."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftp_deploy.cli_options import ModelOverrideOption, ReferenceDeviceOption, TrustOption
from ftp_deploy.console import RichProgress, console
from ftp_deploy.engines.trt_profile import DEFAULT_PROFILE, ShapeProfile, format_shape, parse_shape
from ftp_deploy.errors import UsageError
from ftp_deploy.export_format import EXPORT_DTYPES, TensorRtSection
from ftp_deploy.exporters.options import (
    ATTENTION_FORMS,
    DEFAULT_OPSET,
    ENGINE_ATTENTION,
    ENGINES,
    SUPPORTED_OPSETS,
    ExportOptions,
)
from ftp_deploy.exporters.triton_repo import DEFAULT_MAX_BATCH


def _shape_help(which: str, default: tuple[int, int]) -> str:
    return f"--engine trt: the {which} BATCH,SEQUENCE of the optimization profile (default {format_shape(default)})"


def export(
    run_dir: Annotated[Path, typer.Argument(help="A routed-model folder (ftp_config.json)")],
    out: Annotated[Path, typer.Option(help="The artifact folder to create (built beside it, then renamed)")],
    engine: Annotated[str, typer.Option(help=f"One of {', '.join(ENGINES)}")] = "onnx",
    model: ModelOverrideOption = None,
    dtype: Annotated[str, typer.Option(help=f"One of {', '.join(EXPORT_DTYPES)}")] = "fp32",
    opset: Annotated[int, typer.Option(help=f"ONNX opset: {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]}")] = (
        DEFAULT_OPSET
    ),
    dense: Annotated[bool, typer.Option(help="Export the unrouted base model instead (the baseline)")] = False,
    last_token_logits: Annotated[bool, typer.Option(help="Logits for the last position only (prefill)")] = False,
    debug_outputs: Annotated[
        bool, typer.Option(help="Also output each block's kept indices and the hidden state it leaves")
    ] = False,
    with_past: Annotated[
        bool,
        typer.Option(
            help="For generation (Optimum's text-generation-with-past): the prefill also returns every layer's "
            "compacted KV cache, and decoder.onnx continues from it one token at a time; tokenizer included"
        ),
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out")] = False,
    trust_remote_code: TrustOption = False,
    min_shape: Annotated[str | None, typer.Option(help=_shape_help("smallest", DEFAULT_PROFILE.min_shape))] = None,
    opt_shape: Annotated[str | None, typer.Option(help=_shape_help("tuned-for", DEFAULT_PROFILE.opt_shape))] = None,
    max_shape: Annotated[str | None, typer.Option(help=_shape_help("largest", DEFAULT_PROFILE.max_shape))] = None,
    onnx_only: Annotated[
        bool, typer.Option(help="--engine trt: no engine here; write the script that builds it on the target")
    ] = False,
    device: ReferenceDeviceOption = "auto",
    attention: Annotated[
        str | None,
        typer.Option(
            help=f"The prefill's attention: {' or '.join(ATTENTION_FORMS)} (default: "
            + ", ".join(f"{form} for --engine {engine}" for engine, form in ENGINE_ATTENTION.items())
            + "); fused is ONNX Runtime's GroupQueryAttention, memory linear in the prompt, ONNX Runtime only"
        ),
    ] = None,
    triton_repo: Annotated[
        Path | None,
        typer.Option(
            help="Also add the exported graphs to this Triton Inference Server model repository (config.pbtxt, "
            "version 1; needs the \\[triton-server] extra)"
        ),
    ] = None,
    triton_max_batch: Annotated[
        int, typer.Option(min=1, help="--triton-repo: max_batch_size of the ONNX Runtime model")
    ] = DEFAULT_MAX_BATCH,
) -> None:
    """Export a routed model to ONNX: validated against PyTorch and smoke-run before it is kept.

    With --engine trt, also the TensorRT optimization profile and build script, and the engine
    itself where TensorRT and a CUDA GPU are present.
    """
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    shapes = {"--min-shape": min_shape, "--opt-shape": opt_shape, "--max-shape": max_shape}
    if engine != "trt" and (onnx_only or any(shapes.values())):
        raise UsageError("--onnx-only and the --*-shape options apply to --engine trt only")
    if attention is not None and attention not in ATTENTION_FORMS:
        raise UsageError(f"unknown --attention {attention!r}; choose one of {', '.join(ATTENTION_FORMS)}")
    given = {option: parse_shape(text, option) for option, text in shapes.items() if text is not None}
    from ftp_deploy.placement import memory_errors, resolve_placement

    placement = resolve_placement(device)
    if triton_repo is not None:
        from ftp_deploy.exporters.triton_repo import check_repository

        check_repository(triton_repo, out.name)
    options = ExportOptions(
        model=model,
        dtype=dtype,
        opset=opset,
        dense=dense,
        last_token_logits=last_token_logits,
        debug_outputs=debug_outputs,
        with_past=with_past,
        overwrite=overwrite,
        trust_remote_code=trust_remote_code,
        device=placement.device,
        attention=attention,
    )
    from ftp_deploy.exporters.pipeline import export_onnx
    from ftp_deploy.exporters.trt_export import TrtOptions, export_trt

    with RichProgress() as progress, memory_errors("--device cpu (the reference then runs on the CPU)"):
        if engine == "trt":
            profile = ShapeProfile(
                given.get("--min-shape", DEFAULT_PROFILE.min_shape),
                given.get("--opt-shape", DEFAULT_PROFILE.opt_shape),
                given.get("--max-shape", DEFAULT_PROFILE.max_shape),
            )
            result = export_trt(run_dir, out, options, TrtOptions(profile, onnx_only), progress=progress)
        else:
            result = export_onnx(run_dir, out, options, progress=progress)
    manifest, validation = result.manifest, result.manifest.validation
    console.print(f"exported {manifest.graph} {dtype} ONNX to {result.out}")
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
    if triton_repo is not None:
        from ftp_deploy.exporters.triton_repo import write_triton_repository

        configs = write_triton_repository(result.out, triton_repo, max_batch_size=triton_max_batch)
        console.print(f"Triton model repository {triton_repo} (not served here):")
        for path in configs:
            console.print(f"  {path}", markup=False, highlight=False, soft_wrap=True)


def _print_engine_commands(out: Path, section: TensorRtSection) -> None:
    from ftp_deploy.exporters.trt_export import engine_commands

    build, benchmark = engine_commands(ShapeProfile.from_json(section.profile), out.resolve()).shell()
    if section.plan_file is None or section.built_for is None:
        console.print(
            "build the TensorRT engine on the target machine (NVIDIA GPU, TensorRT >= 10.9, "
            "pip install 'ftp-deploy[trt]'; trtexec cannot build it: its plugins are Python plugins):",
            markup=False,
        )
        console.print(f"  {build}", markup=False, highlight=False, soft_wrap=True)
    else:
        built = section.built_for
        console.print(f"built {out / section.plan_file} for {built['gpu']} (TensorRT {built['tensorrt']})")
    console.print("time the engine with trtexec:", markup=False)
    console.print(f"  {benchmark}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"({out / section.build_script} runs both)", markup=False, highlight=False)
