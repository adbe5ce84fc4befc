"""A whole `train`, as the command runs it: in this process, or in the N that --num-processes starts.

Every process runs `train_rank`; the placement is resolved there, after the process has made its
own GPU the current one, so `--device auto` or `cuda` gives each process its own GPU.
"""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ftp_deploy.progress import NO_PROGRESS, Progress
from ftp_deploy.training.options import TrainOptions

if TYPE_CHECKING:
    from ftp_deploy.formats.run_state import RunState
    from ftp_deploy.training.ranks import Ranks

MEMORY_OPTIONS = (
    "--checkpoint-activations, --dtype bf16, a smaller --batch-size, --search-batch or --seq-len, "
    "or --device-map auto over more GPUs; --resume continues the run"
)


def train(
    out: Path | str, options: TrainOptions | None = None, progress: Progress = NO_PROGRESS, **fields: Any
) -> RunState | None:
    """Search the schedule, train the router, fine-tune the schedule into the run folder `out`.

    `options` (default TrainOptions()) with `fields` replaced by name, as the command line names
    them. Returns the run state (also in `out`/run.json); None on the ranks other than 0 of a run
    that torchrun or accelerate launched. A live progress cannot cross into the processes that
    `num_processes` > 1 starts: their rank 0 then shows its own on the console when `progress` is
    not NO_PROGRESS.
    """
    opts, out = replace(options or TrainOptions(), **fields), Path(out)
    from ftp_deploy.placement import resolve_placement
    from ftp_deploy.training.launcher import launch
    from ftp_deploy.training.ranks import joined_ranks

    resolve_placement(opts.device, opts.dtype, opts.device_map)  # a bad placement fails before any process starts
    if opts.num_processes > 1:
        return launch(
            opts.num_processes, train_rank, opts, out, progress is not NO_PROGRESS, timeout_s=opts.rank_timeout
        )
    with joined_ranks(opts.rank_timeout) as ranks:  # one process, or one of those torchrun started
        return train_rank(ranks, opts, out, progress if ranks.is_main else NO_PROGRESS)


def train_rank(ranks: Ranks, options: TrainOptions, out: Path, progress: Progress | bool) -> RunState | None:
    """One process's share of `train`; rank 0 alone shows progress (and, in the pipeline, writes).

    `progress` True: rank 0 shows a console progress of its own (a process `launch` started).
    """
    from ftp_deploy.console import RichProgress
    from ftp_deploy.placement import memory_errors, resolve_placement
    from ftp_deploy.training.pipeline import run_training

    placement = resolve_placement(options.device, options.dtype, options.device_map)
    shown: AbstractContextManager[Progress]
    if isinstance(progress, bool):
        shown = RichProgress() if progress and ranks.is_main else nullcontext(NO_PROGRESS)
    else:
        shown = nullcontext(progress)
    with shown as reporter, memory_errors(MEMORY_OPTIONS):
        state = run_training(
            options.run_settings(),
            out,
            resume=options.resume,
            time_budget=options.time_budget,
            progress=reporter,
            trust_remote_code=options.trust_remote_code,
            placement=placement,
            checkpoint_activations=options.checkpoint_activations,
            ranks=ranks,
        )
    return state if ranks.is_main else None
