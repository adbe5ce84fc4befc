"""The `ftp-deploy train` command; the CLI registers it with `app.command()(train)`.

Only torch-free modules load at import (the defaults come from training/config.py and settings.py);
the pipeline loads when the command runs, so registering it keeps the CLI quick to start.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich import box
from rich.table import Table

from ftp_deploy.cli_options import DeviceMapOption, DeviceOption, DtypeOption, ModelOption, TrustOption
from ftp_deploy.console import RichProgress, console
from ftp_deploy.data_root import DATA_ENV
from ftp_deploy.formats.record import REPORT_MD
from ftp_deploy.formats.run_state import RunState
from ftp_deploy.progress import NO_PROGRESS
from ftp_deploy.schedule import DEFAULT_S_MAX
from ftp_deploy.training.config import (
    RANK_TIMEOUT_S,
    DataConfig,
    LossWeights,
    SearchConfig,
    TrainConfig,
    default_source,
)
from ftp_deploy.training.settings import ATTENTION_PRIORS, FINETUNE_SEARCH, RunSettings, parse_weights

if TYPE_CHECKING:
    from ftp_deploy.training.ranks import Ranks

_DATA = DataConfig()
_SEARCH = SearchConfig()
_TRAIN = TrainConfig()
_LOSSES = LossWeights()
GA = "Schedule search"
LOSS = "Loss weights"
DEFAULT_ATTENTION_PRIORS = ",".join(f"{weight:g}" for weight in ATTENTION_PRIORS)
MEMORY_OPTIONS = (
    "--checkpoint-activations, --dtype bf16, a smaller --batch-size, --search-batch or --seq-len, "
    "or --device-map auto over more GPUs; --resume continues the run"
)


def train(
    model: ModelOption = "smollm2-135m",
    data: Annotated[
        str | None,
        typer.Option(
            help="A .txt/.raw/.utf8/.jsonl file or a folder of them; wikitext2, c4 or alpaca (needs the \\[data] "
            "extra and a network); or `self` to sample from the model. Default: calibration_text under "
            f"${DATA_ENV} (else ../shared/data) when present, else self"
        ),
    ] = None,
    sparsity: Annotated[float, typer.Option(help="Target FLOP-weighted mean token sparsity")] = 0.3,
    *,
    out: Annotated[Path, typer.Option(help="Run folder: checkpoints, metrics, the routed model and report.md")],
    seq_len: Annotated[int, typer.Option(help="Tokens per training block")] = _DATA.seq_len,
    steps: Annotated[int, typer.Option(help="Router training steps")] = _TRAIN.steps,
    batch_size: Annotated[int, typer.Option(help="Blocks per training step")] = _TRAIN.batch_size,
    seed: Annotated[int, typer.Option(help="Seeds the data split, the searches and the router")] = 0,
    resume: Annotated[bool, typer.Option(help="Continue the interrupted run in --out (same options)")] = False,
    time_budget: Annotated[
        float | None, typer.Option(help="Minutes for the whole command; phases stop early to fit")
    ] = None,
    lr: Annotated[float, typer.Option(help="AdamW learning rate")] = _TRAIN.lr,
    checkpoint_every: Annotated[int, typer.Option(help="Steps between checkpoints")] = _TRAIN.checkpoint_every,
    search_batch: Annotated[int, typer.Option(help="Blocks in the searches' calibration batch")] = _TRAIN.search_batch,
    validation_batch: Annotated[
        int, typer.Option(help="Blocks held out of training that decide which router, prior and schedule are kept")
    ] = _TRAIN.validation_batch,
    scored: Annotated[int, typer.Option(help="Last positions scored by KL (FTP_SPEC 1b)")] = _TRAIN.scored,
    s_max: Annotated[float, typer.Option(help="Largest sparsity of any block")] = DEFAULT_S_MAX,
    monotone: Annotated[
        bool, typer.Option(help="Search only schedules whose sparsity never falls from one block to the next")
    ] = True,
    routing: Annotated[
        str,
        typer.Option(
            help="Routing of the trained router: monotone (a token skipped once stays skipped, so the attention "
            "factors cannot bring back stale tokens) or topk"
        ),
    ] = "monotone",
    attention_priors: Annotated[
        str,
        typer.Option(
            help="Comma-separated attention-score weights of the router's starting point, scored on the "
            "validation blocks (monotone routing; 0 is the static order)"
        ),
    ] = DEFAULT_ATTENTION_PRIORS,
    ga_population: Annotated[int, typer.Option(help="Genomes per generation", rich_help_panel=GA)] = _SEARCH.population,
    ga_generations: Annotated[
        int, typer.Option(help="Generations, the initial one included", rich_help_panel=GA)
    ] = _SEARCH.generations,
    ga_mutation_sigma: Annotated[
        float, typer.Option(help="Gaussian mutation, in sparsity units", rich_help_panel=GA)
    ] = _SEARCH.mutation_sigma,
    finetune_generations: Annotated[
        int, typer.Option(help="Generations of the fine-tune search", rich_help_panel=GA)
    ] = FINETUNE_SEARCH.generations,
    guide_weight: Annotated[
        float, typer.Option(help="Initial guide-loss weight", rich_help_panel=LOSS)
    ] = _LOSSES.guide,
    guide_decay: Annotated[
        float, typer.Option(help="Fraction of the steps over which the guide weight falls to 0", rich_help_panel=LOSS)
    ] = _LOSSES.guide_decay,
    sparsity_weight: Annotated[
        float, typer.Option(help="Weight of the sparsity penalty", rich_help_panel=LOSS)
    ] = _LOSSES.sparsity,
    distill_weight: Annotated[
        float, typer.Option(help="Weight of the distillation KL", rich_help_panel=LOSS)
    ] = _LOSSES.distill,
    trust_remote_code: TrustOption = False,
    device: DeviceOption = "auto",
    dtype: DtypeOption = "fp32",
    device_map: DeviceMapOption = None,
    checkpoint_activations: Annotated[
        bool,
        typer.Option(
            help="Recompute each decoder block in the backward pass instead of keeping its activations "
            "(only the router trains): much less memory at long --seq-len, about a third more compute"
        ),
    ] = False,
    num_processes: Annotated[
        int,
        typer.Option(
            min=1,
            help="Processes to start, as `torchrun --standalone --nproc-per-node N` would (gloo on CPU, NCCL on "
            "CUDA): the searches' evaluations and each global batch are shared out; same result as one process",
        ),
    ] = 1,
    rank_timeout: Annotated[
        float, typer.Option(min=1, help="Seconds a process of a multi-process run waits for the others")
    ] = RANK_TIMEOUT_S,
) -> None:
    """Search the sparsity schedule, train the router, fine-tune the schedule; write the run folder."""
    settings = RunSettings(
        model=model,
        data=data or default_source(),
        sparsity=sparsity,
        seed=seed,
        s_max=s_max,
        monotone_schedules=monotone,
        routing_mode=routing,
        attention_priors=parse_weights(attention_priors),
        data_config=DataConfig(seq_len=seq_len),
        search=SearchConfig(population=ga_population, generations=ga_generations, mutation_sigma=ga_mutation_sigma),
        finetune=replace(FINETUNE_SEARCH, generations=finetune_generations),
        train=TrainConfig(
            steps=steps,
            batch_size=batch_size,
            lr=lr,
            checkpoint_every=checkpoint_every,
            scored=scored,
            search_batch=search_batch,
            validation_batch=validation_batch,
        ),
        losses=LossWeights(
            guide=guide_weight, guide_decay=guide_decay, sparsity=sparsity_weight, distill=distill_weight
        ),
    )
    from ftp_deploy.placement import resolve_placement
    from ftp_deploy.training.launcher import launch
    from ftp_deploy.training.ranks import joined_ranks

    resolve_placement(device, dtype, device_map)  # a bad placement is one line before any process starts
    args = (settings, out, resume, time_budget, trust_remote_code, (device, dtype, device_map), checkpoint_activations)
    if num_processes > 1:
        state = launch(num_processes, train_rank, *args, timeout_s=rank_timeout)
    else:
        with joined_ranks(rank_timeout) as ranks:  # one process, or one of those torchrun started
            state = train_rank(ranks, *args)
            if not ranks.is_main:
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


def train_rank(
    ranks: Ranks,
    settings: RunSettings,
    out: Path,
    resume: bool,
    time_budget: float | None,
    trust_remote_code: bool,
    placement_options: tuple[str, str, str | None] = ("auto", "fp32", None),
    checkpoint_activations: bool = False,
) -> RunState:
    """One process's share of `train`; rank 0 alone shows progress (and, in the pipeline, writes).

    The placement is resolved here, in the process, after its rank has made its own GPU the
    current one, so `--device auto` or `cuda` gives each process its own GPU.
    """
    from ftp_deploy.placement import memory_errors, resolve_placement
    from ftp_deploy.training.pipeline import run_training

    placement = resolve_placement(*placement_options)
    progress_context = RichProgress() if ranks.is_main else nullcontext(NO_PROGRESS)
    with progress_context as progress, memory_errors(MEMORY_OPTIONS):
        return run_training(
            settings,
            out,
            resume=resume,
            time_budget=time_budget,
            progress=progress,
            trust_remote_code=trust_remote_code,
            placement=placement,
            checkpoint_activations=checkpoint_activations,
            ranks=ranks,
        )
