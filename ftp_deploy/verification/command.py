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
from ftp_deploy.verification.options import MIN_TIMED_RUNS, RUNTIMES, VerifyOptions


def _lengths(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(t) for t in text.split(",") if t.strip())
    except ValueError as err:
        raise UsageError(f"--seq-lens takes comma-separated integers, got {text!r}") from err


_VERIFY = VerifyOptions()


def verify(
    art_dir: Annotated[Path, typer.Argument(help="An exported artifact folder (manifest.json)")],
    against: Annotated[
        Path | None, typer.Option(help="The run folder to compare with (default: the export's)")
    ] = _VERIFY.against,
    baseline: Annotated[Path | None, typer.Option(help="A dense artifact to time side by side")] = _VERIFY.baseline,
    seq_lens: Annotated[str, typer.Option(help="Sequence lengths to time; empty to skip")] = ",".join(
        map(str, _VERIFY.seq_lens)
    ),
    batch: Annotated[int, typer.Option(help="Batch size for latency")] = _VERIFY.batch,
    atol: Annotated[float | None, typer.Option(help="Absolute tolerance (default by dtype)")] = _VERIFY.atol,
    rtol: Annotated[float | None, typer.Option(help="Relative tolerance (default by dtype)")] = _VERIFY.rtol,
    report: Annotated[
        Path | None, typer.Option(help="Report folder (default: ART_DIR-verify beside it)")
    ] = _VERIFY.report,
    runtime: Annotated[str, typer.Option(help=" or ".join(RUNTIMES))] = _VERIFY.runtime,
    inputs: Annotated[
        Path | None, typer.Option(help="Replay feeds saved by an earlier verify (inputs.json)")
    ] = _VERIFY.inputs,
    runs: Annotated[int, typer.Option(help=f"Timed runs per length (at least {MIN_TIMED_RUNS})")] = _VERIFY.runs,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime intra-op threads")] = _VERIFY.threads,
    decode_steps: Annotated[
        int, typer.Option(help="Decode steps checked against PyTorch (a --with-past export); 0 to skip")
    ] = _VERIFY.decode_steps,
    model: ModelOverrideOption = _VERIFY.model,
    trust_remote_code: TrustOption = _VERIFY.trust_remote_code,
    device: ReferenceDeviceOption = _VERIFY.device,
    device_map: DeviceMapOption = _VERIFY.device_map,
) -> None:
    """Check an exported model against PyTorch (Polygraphy) and time it against the dense baseline.

    The reference computes in the precision the exported file does (its weights rounded to the
    file's dtype), so verify takes no --dtype.
    """
    options = VerifyOptions(  # a bad value fails here, before PyTorch and Polygraphy load
        against=against,
        baseline=baseline,
        seq_lens=_lengths(seq_lens),
        batch=batch,
        atol=atol,
        rtol=rtol,
        report=report,
        runtime=runtime,
        inputs=inputs,
        runs=runs,
        threads=threads,
        decode_steps=decode_steps,
        model=model,
        trust_remote_code=trust_remote_code,
        device=device,
        device_map=device_map,
    )
    from ftp_deploy.placement import memory_errors
    from ftp_deploy.verification.report import summary_lines
    from ftp_deploy.verification.verify import failure_summary
    from ftp_deploy.verification.verify import verify as run_verify

    with RichProgress() as progress, memory_errors("--device-map auto or --device cpu"):
        result = run_verify(art_dir, options, progress)
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
