"""The `ftp-deploy eval` command: a thin typer layer over `pipeline.evaluate`.

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
from ftp_deploy.evaluation.options import REPORT_SUBFOLDER, EvalOptions
from ftp_deploy.evaluation.tasks import GENERIC_TASKS, NAMED_TASKS

_EVAL = EvalOptions()


def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A trained run folder (ftp_config.json + router.safetensors)")],
    tasks: Annotated[
        str, typer.Option(help=f"Comma-separated: {', '.join(NAMED_TASKS)}, {GENERIC_TASKS}")
    ] = _EVAL.tasks,
    baselines: Annotated[
        str, typer.Option(help="Comma-separated baselines at the run's sparsity; dense is always included")
    ] = _EVAL.baselines,
    limit: Annotated[
        int | None, typer.Option(help="A fixed, seeded subset of N items (windows for ppl)")
    ] = _EVAL.limit,
    report: Annotated[
        Path | None, typer.Option(help=f"Folder for the report files (default RUN_DIR/{REPORT_SUBFOLDER})")
    ] = _EVAL.report,
    data_dir: Annotated[
        Path | None, typer.Option(help=f"Folder of the task files (default ${DATA_ENV}, else ../shared/data)")
    ] = _EVAL.data_dir,
    model: ModelOverrideOption = _EVAL.model,
    trust_remote_code: TrustOption = _EVAL.trust_remote_code,
    seq_len: Annotated[int, typer.Option(help="Perplexity window length in tokens")] = _EVAL.seq_len,
    scored_tokens: Annotated[
        int | None, typer.Option(help="Scored positions at the end of each window (default: FTP_SPEC 1b's)")
    ] = _EVAL.scored_tokens,
    device: DeviceOption = _EVAL.device,
    dtype: DtypeOption = _EVAL.dtype,
    device_map: DeviceMapOption = _EVAL.device_map,
) -> None:
    """Accuracy retention of a trained run against dense and pruning baselines at the same sparsity."""
    options = EvalOptions(
        tasks=tasks,
        baselines=baselines,
        limit=limit,
        report=report,
        data_dir=data_dir,
        model=model,
        trust_remote_code=trust_remote_code,
        seq_len=seq_len,
        scored_tokens=scored_tokens,
        device=device,
        dtype=dtype,
        device_map=device_map,
    )
    from ftp_deploy.evaluation.pipeline import evaluate as run_evaluate
    from ftp_deploy.evaluation.report import table_rows
    from ftp_deploy.placement import memory_errors

    with RichProgress() as progress, memory_errors("--dtype bf16, a smaller --seq-len, or --device-map auto"):
        evaluation = run_evaluate(run_dir, options, progress)
    results = evaluation.results
    header, rows = table_rows(results)
    table = Table(title=f"{results.model.ref}: accuracy % (perplexity on scored positions)")
    for column in header:
        table.add_column(column, justify="left" if column == "method" else "right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    console.print("wrote " + ", ".join(str(path) for path in evaluation.files))
