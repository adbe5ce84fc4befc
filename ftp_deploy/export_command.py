"""`ftp-deploy export`: a routed run folder into an ONNX artifact folder, with progress on stderr."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from ftp_deploy.errors import MissingDependencyError, UsageError
from ftp_deploy.exporters.options import DEFAULT_OPSET, ENGINES, EXPORT_DTYPES, SUPPORTED_OPSETS

console = Console()
err_console = Console(stderr=True)


def export(
    run_dir: Annotated[Path, typer.Argument(help="A routed-model folder (ftp_config.json)")],
    out: Annotated[Path, typer.Option(help="The artifact folder to create (built beside it, then renamed)")],
    engine: Annotated[str, typer.Option(help=f"One of {', '.join(ENGINES)}")] = "onnx",
    model: Annotated[
        str | None, typer.Option(help="The base model, if not the one the run names (checked to match)")
    ] = None,
    dtype: Annotated[str, typer.Option(help=f"One of {', '.join(EXPORT_DTYPES)}")] = "fp32",
    opset: Annotated[int, typer.Option(help=f"ONNX opset: {SUPPORTED_OPSETS[0]} to {SUPPORTED_OPSETS[-1]}")] = (
        DEFAULT_OPSET
    ),
    dense: Annotated[bool, typer.Option(help="Export the unrouted base model instead (the baseline)")] = False,
    last_token_logits: Annotated[bool, typer.Option(help="Logits for the last position only (prefill)")] = False,
    debug_outputs: Annotated[
        bool, typer.Option(help="Also output each block's kept indices and the hidden state it leaves")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace an earlier export in --out")] = False,
    trust_remote_code: Annotated[bool, typer.Option(help="Allow the model's own Python code from the hub")] = False,
) -> None:
    """Export a routed model to ONNX: validated against PyTorch and smoke-run before it is kept."""
    if engine == "trt":
        raise MissingDependencyError(
            "TensorRT export (issue #6) needs TensorRT and a CUDA GPU: pip install 'ftp-deploy[trt]'"
        )
    if engine not in ENGINES:
        raise UsageError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    from ftp_deploy.exporters.pipeline import export_onnx

    columns = (SpinnerColumn(finished_text="[green]done[/]"), TextColumn("{task.description}"), TimeElapsedColumn())
    with Progress(*columns, console=err_console) as progress:

        @contextlib.contextmanager
        def step(description: str) -> Iterator[None]:
            task = progress.add_task(description, total=1)
            yield
            progress.update(task, completed=1)

        result = export_onnx(
            run_dir,
            out,
            model=model,
            dtype=dtype,
            opset=opset,
            dense=dense,
            last_token_logits=last_token_logits,
            debug_outputs=debug_outputs,
            overwrite=overwrite,
            trust_remote_code=trust_remote_code,
            on_step=step,
        )
    validation = result.manifest["validation"]
    console.print(f"exported {result.manifest['graph']} {dtype} ONNX to {result.out}")
    console.print(
        f"validated at lengths {validation['lengths']}: logits max |diff| {validation['logits_max_abs_diff']:.2e}"
        + (
            f", routing agreement {validation['routing_agreement']:.2%}"
            if validation["routing_agreement"] is not None
            else ""
        )
    )
    for name in result.manifest["files"]:
        console.print(f"  {result.out / name}")
