"""The `ftp-deploy` command line: a thin layer over the library, one clear line per error."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import click
import typer
from rich.markup import escape
from rich.table import Table

from ftp_deploy.cli_options import DeviceOption, DtypeOption, ModelOption, TrustOption
from ftp_deploy.console import console, err_console
from ftp_deploy.errors import FtpDeployError
from ftp_deploy.evaluation.command import evaluate
from ftp_deploy.exporters.command import build_plan, export
from ftp_deploy.generation.command import generate
from ftp_deploy.placement import DEFAULT_DEVICE, DEFAULT_DTYPE
from ftp_deploy.serving.command import serve
from ftp_deploy.training.command import train
from ftp_deploy.training.options import DEFAULT_MODEL, DEFAULT_SPARSITY
from ftp_deploy.verification.command import verify

app = typer.Typer(
    name="ftp-deploy",
    help="Train, evaluate, export and verify FTP token-routed LLaMA-family models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
ABORTED = 130  # the shell's code for a process ended by SIGINT

DEFAULT_PROMPT = (
    "Water boils at 100 degrees Celsius at sea level. At higher altitudes the air pressure is lower, "
    "so water boils at a lower temperature. In the same way, a pressure cooker raises the pressure, "
    "so the water inside boils at"
)


@app.command()
def info(run_dir: Annotated[Path, typer.Argument(help="A routed-model folder (ftp_config.json)")]) -> None:
    """Print a routed model's schedule, router, base model and sparsity."""
    from ftp_deploy.summary import summarize_artifact

    console.print(summarize_artifact(run_dir))


@app.command()
def summary(
    run_dir: Annotated[Path, typer.Argument(help="A trained run folder (ftp_config.json + run.json)")],
    verify_report: Annotated[
        Path | None, typer.Option(help="verify's report folder: adds export parity, generation and speed")
    ] = None,
) -> None:
    """Say in a few sentences what a run achieved: what training changed, how close to dense, how fast."""
    from ftp_deploy.summary import run_summary

    for line in run_summary(run_dir, verify_report):
        console.print(line, markup=False, highlight=False, soft_wrap=True)


@app.command()
def run(
    prompt: Annotated[str, typer.Option(help="Text to continue")] = DEFAULT_PROMPT,
    model: ModelOption = DEFAULT_MODEL,
    sparsity: Annotated[float, typer.Option(help="Uniform token sparsity for the static router")] = DEFAULT_SPARSITY,
    router: Annotated[
        Path | None, typer.Option(help="A routed-model folder to use instead of the static router")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=512)] = 24,
    trust_remote_code: TrustOption = False,
    device: DeviceOption = DEFAULT_DEVICE,
    dtype: DtypeOption = DEFAULT_DTYPE,
) -> None:
    """Run a prompt through the dense and the routed model, both with a KV cache; print outputs, times, cache sizes."""
    from ftp_deploy.generation.compare import compare_dense_routed
    from ftp_deploy.placement import memory_errors, resolve_placement

    placement = resolve_placement(device, dtype)
    with memory_errors("--dtype bf16 or a shorter --prompt"):
        rows = compare_dense_routed(prompt, model, sparsity, router, max_new_tokens, trust_remote_code, placement)
    console.print(f"[bold]prompt:[/] {escape(prompt)}")
    for row in rows:  # each continuation on one line, whole (a table would cut it to the width); \n as typed
        console.print(f"[bold]{escape(row.name)}:[/] {escape(row.text)}".replace("\n", "\\n"))
    where = f"{placement.device}, {placement.dtype}"
    table = Table(title=f"{model} ({where}), greedy with a KV cache (transformers generate)")
    for column in ("model", "first token ms", "decode ms/token", "KV cache KiB", "KV vs dense"):
        table.add_column(column)
    dense = rows[0].generation
    for row in rows:
        g = row.generation
        decode = f"{g.decode_ms_per_token:.1f}" if g.decode_ms_per_token is not None else "-"
        ratio = f"{g.kv_bytes / dense.kv_bytes:.2f}x" if dense.kv_bytes else "-"
        name = row.name.split(" (")[0]  # "routed": the full name is on its continuation's line
        table.add_row(name, f"{g.ttft_s * 1e3:.0f}", decode, f"{g.kv_bytes / 1024:.0f}", ratio)
    console.print(table)
    console.print(
        "KV cache: keys and values held when generation ended (prompt and new tokens); a routed block caches "
        "only the prompt tokens it computed.",
        markup=False,
        highlight=False,
    )
    routed = rows[1].generation
    if routed.decode_ms_per_token and dense.decode_ms_per_token:
        console.print(
            f"Decode: routed {routed.decode_ms_per_token / dense.decode_ms_per_token:.2f}x dense's time per token. "
            "Every new token computes every block (FTP_SPEC section 9), so routing saves time at the prompt "
            "(first token) and memory (the KV cache), not per decoded token.",
            markup=False,
            highlight=False,
        )


app.command()(train)
app.command(name="eval")(evaluate)
app.command()(export)
app.command()(verify)
app.command()(generate)
app.command(name="build-plan")(build_plan)
app.command()(serve)


def main(argv: list[str] | None = None) -> int:
    """Entry point: FtpDeployError and usage errors become one line on stderr and an exit code."""
    try:
        # Outside standalone mode typer returns, not raises, the code of a Ctrl-C (130) or a typer.Exit.
        code = app(args=argv, standalone_mode=False)
    except FtpDeployError as err:
        err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return err.exit_code
    except (click.exceptions.Abort, typer.Abort):
        err_console.print("aborted")
        return ABORTED
    except (click.ClickException, typer.TyperException) as err:
        # typer 0.29 raises usage errors from its own copy of click, which subclass TyperException.
        if type(err).__name__ == "NoArgsIsHelpError":  # `ftp-deploy` alone: the help is the answer
            err.show()  # type: ignore[union-attr]
        else:
            err_console.print(f"[bold red]error:[/] {escape(_one_line(err))}", highlight=False, soft_wrap=True)
        return int(getattr(err, "exit_code", 2))
    except (click.exceptions.Exit, typer.Exit) as err:
        return int(getattr(err, "exit_code", 0))
    if code == ABORTED:
        err_console.print("aborted")
    return code if isinstance(code, int) else 0


def _one_line(err: Exception) -> str:
    """click's message with a pointer to the command's help, in place of its four-line usage block."""
    format_message = getattr(err, "format_message", None)
    message = " ".join((format_message() if format_message else str(err)).split())
    names, ctx = [], getattr(err, "ctx", None)
    while ctx is not None and ctx.parent is not None:  # the root's own name is how Python was started
        names.append(ctx.info_name)
        ctx = ctx.parent
    return f"{message} (see: {' '.join(['ftp-deploy', *reversed(names)])} --help)"


if __name__ == "__main__":
    sys.exit(main())
