"""The `ftp-deploy generate` command; the CLI registers it with `app.command()(generate)`.

Only torch-free modules load at import; the option values are checked before any model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftp_deploy.cli_options import DeviceOption, DtypeOption, ModelOverrideOption, TrustOption
from ftp_deploy.console import RichProgress, console, err_console
from ftp_deploy.errors import UsageError
from ftp_deploy.generation.settings import GenerationSettings
from ftp_deploy.generation.source import RUNTIMES, check_prompt, check_runtime


def generate(
    source_dir: Annotated[
        Path, typer.Argument(help="A run folder (ftp_config.json) or an exported artifact folder (manifest.json)")
    ],
    prompt: Annotated[str, typer.Option(help="Text to continue")],
    max_new_tokens: Annotated[int, typer.Option(help="At most this many new tokens")] = 64,
    runtime: Annotated[
        str | None,
        typer.Option(help=f"One of {', '.join(RUNTIMES)} (default: torch for a run folder, onnxrt for an export)"),
    ] = None,
    stream: Annotated[bool, typer.Option(help="Print the text as it is generated")] = False,
    chat: Annotated[bool, typer.Option(help="Wrap the prompt in the tokenizer's chat template")] = False,
    do_sample: Annotated[bool, typer.Option(help="Sample instead of greedy decoding")] = False,
    temperature: Annotated[float, typer.Option(help="--do-sample: softmax temperature")] = 1.0,
    top_p: Annotated[float, typer.Option(help="--do-sample: nucleus probability mass")] = 1.0,
    seed: Annotated[int | None, typer.Option(help="--do-sample: seed of the sampler")] = None,
    threads: Annotated[int | None, typer.Option(help="--runtime onnxrt: ONNX Runtime intra-op threads")] = None,
    model: ModelOverrideOption = None,
    trust_remote_code: TrustOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
) -> None:
    """Continue a prompt with a routed model: routed prefill, then decode with the per-layer compacted KV cache.

    The continuation goes to stdout; time to first token, decode time per token and KV-cache bytes to stderr.
    """
    settings = GenerationSettings(max_new_tokens, do_sample, temperature, top_p, seed)
    check_prompt(prompt)
    check_runtime(runtime)
    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be >= 1, got {threads}")
    from ftp_deploy.generation.pipeline import generate as run_generate

    def write(text: str) -> None:
        console.file.write(text)
        console.file.flush()

    from ftp_deploy.placement import memory_errors

    with RichProgress(transient=True) as progress, memory_errors("--dtype bf16 or a shorter --prompt"):
        result = run_generate(
            source_dir,
            prompt,
            settings,
            runtime=runtime,
            chat=chat,
            model=model,
            trust_remote_code=trust_remote_code,
            threads=threads,
            on_text=write if stream else None,
            progress=progress,
            device=device,
            dtype=dtype,
        )
    if not stream:
        console.print(result.text, markup=False, highlight=False, soft_wrap=True)
    g = result.generation
    decode = f"{g.decode_ms_per_token:.1f} ms/token decode" if g.decode_ms_per_token is not None else "no decode step"
    err_console.print(
        f"{result.runtime}: {g.prompt_tokens} prompt tokens, {g.new_tokens} new; time to first token "
        f"{g.ttft_s * 1e3:.0f} ms, {decode}; KV cache {g.kv_bytes / 2**20:.2f} MiB",
        markup=False,
        highlight=False,
        soft_wrap=True,
    )
