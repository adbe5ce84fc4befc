"""`ftp-deploy verify`: parity and latency of an exported artifact; exit 1 when parity fails."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markdown import Markdown

from ftp_deploy.cli_options import DeviceMapOption, ModelOverrideOption, ReferenceDeviceOption, TrustOption
from ftp_deploy.console import RichProgress, console
from ftp_deploy.errors import ParityError, UsageError
from ftp_deploy.formats.record import REPORT_MD
from ftp_deploy.verification.options import DEFAULT_DECODE_STEPS, DEFAULT_LATENCY_LENGTHS, MIN_TIMED_RUNS


def _lengths(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError as err:
        raise UsageError(f"--seq-lens takes comma-separated integers, got {text!r}") from err


def verify(
    art_dir: Annotated[Path, typer.Argument(help="An exported artifact folder (manifest.json)")],
    against: Annotated[Path | None, typer.Option(help="The run folder to compare with (default: the export's)")] = None,
    baseline: Annotated[Path | None, typer.Option(help="A dense artifact to time side by side")] = None,
    seq_lens: Annotated[str, typer.Option(help="Sequence lengths to time; empty to skip")] = ",".join(
        map(str, DEFAULT_LATENCY_LENGTHS)
    ),
    batch: Annotated[int, typer.Option(help="Batch size for latency")] = 1,
    atol: Annotated[float | None, typer.Option(help="Absolute tolerance (default by dtype)")] = None,
    rtol: Annotated[float | None, typer.Option(help="Relative tolerance (default by dtype)")] = None,
    report: Annotated[Path | None, typer.Option(help="Report folder (default: ART_DIR-verify beside it)")] = None,
    runtime: Annotated[str, typer.Option(help="onnxrt or trt")] = "onnxrt",
    inputs: Annotated[Path | None, typer.Option(help="Replay feeds saved by an earlier verify (inputs.json)")] = None,
    runs: Annotated[int, typer.Option(help=f"Timed runs per length (at least {MIN_TIMED_RUNS})")] = MIN_TIMED_RUNS,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime intra-op threads")] = None,
    decode_steps: Annotated[
        int, typer.Option(help="Decode steps checked against PyTorch (a --with-past export); 0 to skip")
    ] = DEFAULT_DECODE_STEPS,
    model: ModelOverrideOption = None,
    trust_remote_code: TrustOption = False,
    device: ReferenceDeviceOption = "auto",
    device_map: DeviceMapOption = None,
) -> None:
    """Check an exported model against PyTorch (Polygraphy) and time it against the dense baseline.

    The reference computes in the precision the exported file does (its weights rounded to the
    file's dtype), so verify takes no --dtype.
    """
    lengths = _lengths(seq_lens)  # a bad value fails before PyTorch and Polygraphy load
    from ftp_deploy.placement import memory_errors, resolve_placement
    from ftp_deploy.verification.report import summary_lines
    from ftp_deploy.verification.verify import failure_summary
    from ftp_deploy.verification.verify import verify as run_verify

    placement = resolve_placement(device, "fp32", device_map)
    with RichProgress() as progress, memory_errors("--device-map auto or --device cpu"):
        result = run_verify(
            art_dir,
            against=against,
            baseline=baseline,
            seq_lens=lengths,
            batch=batch,
            atol=atol,
            rtol=rtol,
            report=report,
            runtime=runtime,
            inputs=inputs,
            runs=runs,
            threads=threads,
            model=model,
            trust_remote_code=trust_remote_code,
            decode_steps=decode_steps,
            progress=progress,
            placement=placement,
        )
    report_md = result.report_dir / REPORT_MD
    if console.is_terminal:
        console.print(Markdown(report_md.read_text(encoding="utf-8")))
    else:
        # Piped, rich cuts the tables at 80 columns: the figures that decide, and where the tables are.
        lines = summary_lines(result.parity, result.latency, result.decode, result.decode_note)
        for line in [*lines, f"compared: {result.compared.brief}"]:
            console.print(line, markup=False, highlight=False, soft_wrap=True)
        console.print(f"tables: {report_md}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"report: {result.report_dir}", markup=False, highlight=False, soft_wrap=True)
    if not result.passed:
        raise ParityError(failure_summary(result.parity, result.decode))
