"""The `ftp-deploy eval` command: a thin typer layer over `pipeline.run_eval`.

Only torch-free modules load at import, so registering the command keeps the CLI quick to start.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ftp_deploy.cli_options import DeviceMapOption, DeviceOption, DtypeOption, ModelOverrideOption, TrustOption
from ftp_deploy.console import RichProgress, console
from ftp_deploy.data_root import DATA_ENV
from ftp_deploy.evaluation.methods import DEFAULT_BASELINES
from ftp_deploy.evaluation.tasks import DEFAULT_TASKS, GENERIC_TASKS, NAMED_TASKS


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A trained run folder (ftp_config.json + router.safetensors)")],
    tasks: Annotated[
        str, typer.Option(help=f"Comma-separated: {', '.join(NAMED_TASKS)}, {GENERIC_TASKS}")
    ] = DEFAULT_TASKS,
    baselines: Annotated[
        str, typer.Option(help="Comma-separated baselines at the run's sparsity; dense is always included")
    ] = DEFAULT_BASELINES,
    limit: Annotated[int | None, typer.Option(help="A fixed, seeded subset of N items (windows for ppl)")] = None,
    report: Annotated[Path | None, typer.Option(help="Folder for the report files (default RUN_DIR/eval)")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help=f"Folder of the task files (default ${DATA_ENV}, else ../shared/data)")
    ] = None,
    model: ModelOverrideOption = None,
    trust_remote_code: TrustOption = False,
    seq_len: Annotated[int, typer.Option(help="Perplexity window length in tokens")] = 512,
    scored_tokens: Annotated[
        int | None, typer.Option(help="Scored positions at the end of each window (default: FTP_SPEC 1b's)")
    ] = None,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    device_map: DeviceMapOption = None,
) -> None:
    """Accuracy retention of a trained run against dense and pruning baselines at the same sparsity."""
    from ftp_deploy.evaluation.pipeline import run_eval
    from ftp_deploy.evaluation.report import table_rows
    from ftp_deploy.placement import memory_errors, resolve_placement

    placement = resolve_placement(device, dtype, device_map)
    with RichProgress() as progress, memory_errors("--dtype bf16, a smaller --seq-len, or --device-map auto"):
        results, written = run_eval(
            run_dir=run_dir,
            tasks=tasks,
            baselines=baselines,
            limit=limit,
            report=report,
            data_dir=data_dir,
            model=model,
            seq_len=seq_len,
            scored_tokens=scored_tokens,
            trust_remote_code=trust_remote_code,
            progress=progress,
            placement=placement,
        )
    header, rows = table_rows(results)
    table = Table(title=f"{results.model.ref}: accuracy % (perplexity on scored positions)")
    for column in header:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("wrote " + ", ".join(str(path) for path in written))
