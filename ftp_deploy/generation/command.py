"""The `ftp-deploy generate` command; the CLI registers it with `app.command()(generate)`.

Only torch-free modules load at import; the option values are checked before any model loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ftp_deploy.cli_options import DeviceOption, DtypeOption, ModelOverrideOption, TrustOption
from ftp_deploy.console import RichProgress, console, err_console
from ftp_deploy.generation.options import GenerateOptions
from ftp_deploy.generation.source import RUNTIMES, check_prompt

_GENERATE = GenerateOptions()


def generate(
    source_dir: Annotated[
        Path, typer.Argument(help="A run folder (ftp_config.json) or an exported artifact folder (manifest.json)")
    ],
    prompt: Annotated[str, typer.Option(help="Text to continue")],
    max_new_tokens: Annotated[int, typer.Option(help="At most this many new tokens")] = _GENERATE.max_new_tokens,
    runtime: Annotated[
        str | None,
        typer.Option(help=f"One of {', '.join(RUNTIMES)} (default: torch for a run folder, onnxrt for an export)"),
    ] = _GENERATE.runtime,
    stream: Annotated[bool, typer.Option(help="Print the text as it is generated")] = False,
    chat: Annotated[bool, typer.Option(help="Wrap the prompt in the tokenizer's chat template")] = _GENERATE.chat,
    do_sample: Annotated[bool, typer.Option(help="Sample instead of greedy decoding")] = _GENERATE.do_sample,
    temperature: Annotated[float, typer.Option(help="--do-sample: softmax temperature")] = _GENERATE.temperature,
    top_p: Annotated[float, typer.Option(help="--do-sample: nucleus probability mass")] = _GENERATE.top_p,
    seed: Annotated[int | None, typer.Option(help="--do-sample: seed of the sampler")] = _GENERATE.seed,
    threads: Annotated[
        int | None, typer.Option(help="--runtime onnxrt: ONNX Runtime intra-op threads")
    ] = _GENERATE.threads,
    model: ModelOverrideOption = _GENERATE.model,
    trust_remote_code: TrustOption = _GENERATE.trust_remote_code,
    device: DeviceOption = _GENERATE.device,
    dtype: DtypeOption = _GENERATE.dtype,
) -> None:
    """Continue a prompt with a routed model: routed prefill, then decode with the per-layer compacted KV cache.

    The continuation goes to stdout; time to first token, decode time per token and KV-cache bytes to stderr.
    """
    options = GenerateOptions(
        max_new_tokens=max_new_tokens,
        runtime=runtime,
        chat=chat,
        do_sample=do_sample,
        temperature=temperature,
        top_p=top_p,
        seed=seed,
        threads=threads,
        model=model,
        trust_remote_code=trust_remote_code,
        device=device,
        dtype=dtype,
    )
    check_prompt(prompt)
    from ftp_deploy.generation.pipeline import generate as run_generate
    from ftp_deploy.placement import memory_errors

    def write(text: str) -> None:
        console.file.write(text)
        console.file.flush()

    with RichProgress(transient=True) as progress, memory_errors("--dtype bf16 or a shorter --prompt"):
        result = run_generate(source_dir, prompt, options, write if stream else None, progress)
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
