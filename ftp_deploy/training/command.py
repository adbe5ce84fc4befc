"""The `ftp-deploy train` command; the CLI registers it with `app.command()(train)`.

Only torch-free modules load at import (the defaults come from training/options.py); the pipeline
loads when the command runs, so registering it keeps the CLI quick to start.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.table import Table

from ftp_deploy.cli_options import DeviceMapOption, DeviceOption, DtypeOption, ModelOption, TrustOption
from ftp_deploy.console import RichProgress, console
from ftp_deploy.data_root import DATA_ENV
from ftp_deploy.formats.record import REPORT_MD
from ftp_deploy.formats.run_state import RunState
from ftp_deploy.training.options import TrainOptions
from ftp_deploy.training.settings import parse_weights

_T = TrainOptions()
GA = "Schedule search"
LOSS = "Loss weights"
DEFAULT_ATTENTION_PRIORS = ",".join(f"{weight:g}" for weight in _T.attention_priors)


def train(
    model: ModelOption = _T.model,
    data: Annotated[
        str | None,
        typer.Option(
            help="A .txt/.raw/.utf8/.jsonl file or a folder of them; wikitext2, c4 or alpaca (needs the \\[data] "
            "extra and a network); or `self` to sample from the model. Default: calibration_text under "
            f"${DATA_ENV} (else ../shared/data) when present, else self"
        ),
    ] = _T.data,
    sparsity: Annotated[float, typer.Option(help="Target FLOP-weighted mean token sparsity")] = _T.sparsity,
    *,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, metrics, the routed model and report.md")],
    seq_len: Annotated[int, typer.Option(help="Tokens per training block")] = _T.seq_len,
    steps: Annotated[int, typer.Option(help="Router training steps")] = _T.steps,
    batch_size: Annotated[int, typer.Option(help="Blocks per training step")] = _T.batch_size,
    seed: Annotated[int, typer.Option(help="Seeds the data split, the searches and the router")] = _T.seed,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out (same options)")] = _T.resume,
    time_budget: Annotated[
        float | None, typer.Option(help="Minutes for the whole command; phases stop early to fit")
    ] = _T.time_budget,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = _T.lr,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints")] = _T.checkpoint_every,
    search_batch: Annotated[int, typer.Option(help="Blocks in the searches' calibration batch")] = _T.search_batch,
    validation_batch: Annotated[
        int, typer.Option(help="Blocks held out of training that decide which router, prior and schedule are kept")
    ] = _T.validation_batch,
    scored: Annotated[int, typer.Option(help="Last positions scored by KL (FTP_SPEC 1b)")] = _T.scored,
    s_max: Annotated[float, typer.Option(help="Largest sparsity of any block")] = _T.s_max,
    monotone: Annotated[
        bool, typer.Option(help="Search only schedules whose sparsity never falls from one block to the next")
    ] = _T.monotone,
    routing: Annotated[
        str,
        typer.Option(
            help="Routing of the trained router: monotone (a token skipped once stays skipped, so the attention "
            "factors cannot bring back stale tokens) or topk"
        ),
    ] = _T.routing,
    attention_priors: Annotated[
        str,
        typer.Option(
            help="Comma-separated attention-score weights of the router's starting point, scored on the "
            "validation blocks (monotone routing; 0 is the static order)"
        ),
    ] = DEFAULT_ATTENTION_PRIORS,
    ga_population: Annotated[int, typer.Option(help="Genomes per generation", rich_help_panel=GA)] = _T.ga_population,
    ga_generations: Annotated[
        int, typer.Option(help="Generations, the initial one included", rich_help_panel=GA)
    ] = _T.ga_generations,
    ga_mutation_sigma: Annotated[
        float, typer.Option(help="Gaussian mutation, in sparsity units", rich_help_panel=GA)
    ] = _T.ga_mutation_sigma,
    finetune_generations: Annotated[
        int, typer.Option(help="Generations of the fine-tune search", rich_help_panel=GA)
    ] = _T.finetune_generations,
    guide_weight: Annotated[
        float, typer.Option(help="Initial guide-loss weight", rich_help_panel=LOSS)
    ] = _T.guide_weight,
    guide_decay: Annotated[
        float, typer.Option(help="Fraction of the steps over which the guide weight falls to 0", rich_help_panel=LOSS)
    ] = _T.guide_decay,
    sparsity_weight: Annotated[
        float, typer.Option(help="Weight of the sparsity penalty", rich_help_panel=LOSS)
    ] = _T.sparsity_weight,
    distill_weight: Annotated[
        float, typer.Option(help="Weight of the distillation KL", rich_help_panel=LOSS)
    ] = _T.distill_weight,
    trust_remote_code: TrustOption = _T.trust_remote_code,
    device: DeviceOption = _T.device,
    dtype: DtypeOption = _T.dtype,
    device_map: DeviceMapOption = _T.device_map,
    checkpoint_activations: Annotated[
        bool,
        typer.Option(
            help="Recompute each decoder block in the backward pass instead of keeping its activations "
            "(only the router trains): much less memory at long --seq-len, about a third more compute"
        ),
    ] = _T.checkpoint_activations,
    num_processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes to start, as `torchrun --standalone --nproc-per-node N` would (gloo on CPU, NCCL on "
            "CUDA): the searches' evaluations and each global batch are shared out; same result as one process",
        ),
    ] = _T.num_processes,
    rank_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds a process of a multi-process run waits for the others")
    ] = _T.rank_timeout,
) -> None:
    """Search the sparsity schedule, train the router, fine-tune the schedule; write the run folder."""
    options = TrainOptions(
        model=model,
        data=data,
        sparsity=sparsity,
        seq_len=seq_len,
        steps=steps,
        batch_size=batch_size,
        seed=seed,
        resume=resume,
        time_budget=time_budget,
        lr=lr,
        checkpoint_every=checkpoint_every,
        search_batch=search_batch,
        validation_batch=validation_batch,
        scored=scored,
        s_max=s_max,
        monotone=monotone,
        routing=routing,
        attention_priors=parse_weights(attention_priors),
        ga_population=ga_population,
        ga_generations=ga_generations,
        ga_mutation_sigma=ga_mutation_sigma,
        finetune_generations=finetune_generations,
        guide_weight=guide_weight,
        guide_decay=guide_decay,
        sparsity_weight=sparsity_weight,
        distill_weight=distill_weight,
        trust_remote_code=trust_remote_code,
        device=device,
        dtype=dtype,
        device_map=device_map,
        checkpoint_activations=checkpoint_activations,
        num_processes=num_processes,
        rank_timeout=rank_timeout,
    )
    from ftp_deploy.training.stage import train as run_train

    # The processes --num-processes starts show their own progress: none here to draw over theirs.
    progress = RichProgress()
    with progress if num_processes == 1 else nullcontext(progress):
        state = run_train(out, options, progress)
    if state is None:  # a rank other than 0 of a launched run
        return
    console.print(heldout_table(state, scored))
    console.print(f"run folder: {out} (ftp_config.json + router.safetensors; {out / REPORT_MD})")


def heldout_table(state: RunState, scored: int) -> Table:
    """The held-out scores of a finished run, narrow enough for an 80-column terminal or pipe."""
    from ftp_deploy.stats import describe
    from ftp_deploy.training.report import ROUTINGS, SHORT_LABELS

    heldout = state.heldout or {}
    table = Table(title=f"held-out blocks, last {scored} predictions", box=box.SIMPLE_HEAD)
    for column in ("routing", "KL to dense ± s.e.", "minus static, uniform [95%]", "top-1", "ppl"):
        table.add_column(column)
    if "trained" in heldout:
        table.add_row("dense", "", "", "", f"{heldout['trained'].dense_perplexity:.2f}")
    for key, _ in ROUTINGS:
        row = heldout.get(key)
        if row is None:
            continue
        versus = row.kl_minus.get("static_uniform")
        table.add_row(
            SHORT_LABELS[key],
            f"{row.kl:.4f} ± {row.kl_stderr:.4f}",
            "" if versus is None else describe(versus, digits=4),
            f"{row.top1_agreement:.1%}",
            f"{row.perplexity:.2f}",
        )
    return table
