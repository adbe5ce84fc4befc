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
from ftp_deploy.exporters.command import export
from ftp_deploy.serving.command import generate
from ftp_deploy.serving.serve_command import serve
from ftp_deploy.training.command import train
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
def run(
    prompt: Annotated[str, typer.Option(help="Text to continue")] = DEFAULT_PROMPT,
    model: ModelOption = "smollm2-135m",
    sparsity: Annotated[float, typer.Option(help="Uniform token sparsity for the static router")] = 0.3,
    router: Annotated[
        Path | None, typer.Option(help="A routed-model folder to use instead of the static router")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option(min=1, max=512)] = 24,
    trust_remote_code: TrustOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
) -> None:
    """Run a prompt through the dense and the routed model, both with a KV cache; print outputs, times, cache sizes."""
    from ftp_deploy.demo import compare_dense_routed
    from ftp_deploy.placement import memory_errors, resolve_placement

    placement = resolve_placement(device, dtype)
    with memory_errors("--dtype bf16 or a shorter --prompt"):
        rows = compare_dense_routed(prompt, model, sparsity, router, max_new_tokens, trust_remote_code, placement)
    console.print(f"[bold]prompt:[/] {escape(prompt)}")
    where = f"{placement.device}, {placement.dtype}"
    table = Table(title=f"{model} ({where}): dense vs routed (greedy, transformers generate with a KV cache)")
    for column in ("model", "continuation", "first token ms", "decode ms/token", "KV cache KiB", "KV vs dense"):
        table.add_column(column)
    dense_bytes = rows[0].generation.kv_bytes
    for row in rows:
        g = row.generation
        decode = f"{g.decode_ms_per_token:.1f}" if g.decode_ms_per_token is not None else "-"
        ratio = f"{g.kv_bytes / dense_bytes:.2f}x" if dense_bytes else "-"
        table.add_row(row.name, escape(row.text), f"{g.ttft_s * 1e3:.0f}", decode, f"{g.kv_bytes / 1024:.0f}", ratio)
    console.print(table)
    console.print(
        "KV cache: keys and values held when generation ended (prompt and new tokens); a routed block caches "
        "only the prompt tokens it computed.",
        markup=False,
        highlight=False,
    )


app.command()(train)
app.command(name="eval")(evaluate)
app.command()(export)
app.command()(verify)
app.command()(generate)
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
        show = getattr(err, "show", None)
        if show is not None:
            show()
        else:
            err_console.print(f"[bold red]error:[/] {escape(str(err))}", highlight=False)
        return int(getattr(err, "exit_code", 2))
    except (click.exceptions.Exit, typer.Exit) as err:
        return int(getattr(err, "exit_code", 0))
    if code == ABORTED:
        err_console.print("aborted")
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(main())
