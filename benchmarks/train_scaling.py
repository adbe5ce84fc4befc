"""Data-parallel training: wall time of the searches and of router training with 1 and with N processes.

Runs the same small `ftp-deploy train` (SmolLM2 by default, sparsity 0.3) once in one process
and once in N processes (`--num-processes N`: torch's elastic launcher, gloo), each process
with `--threads` torch threads, and prints the phases' wall times side by side. The N-process
run must end where the one-process run does: the script also reports the largest difference
of the trained routers and whether the schedules are the same.

    python benchmarks/train_scaling.py --processes 2 --json train_scaling.json
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json

from ftp_deploy.artifacts import load_artifact
from ftp_deploy.data_root import data_file
from ftp_deploy.progress import NO_PROGRESS
from ftp_deploy.training.config import CALIBRATION_TEXT
from ftp_deploy.training.launcher import launch
from ftp_deploy.training.options import TrainOptions
from ftp_deploy.training.ranks import ONE_PROCESS
from ftp_deploy.training.runfolder import RunFolder
from ftp_deploy.training.stage import train_rank

PHASES = ("search", "train", "finetune")


def timed_run(options: TrainOptions, out: Path, processes: int, threads: int) -> dict[str, Any]:
    began = time.monotonic()
    if processes == 1:
        torch.set_num_threads(threads)
        state = train_rank(ONE_PROCESS, options, out, NO_PROGRESS)
    else:
        state = launch(processes, train_rank, options, out, False, timeout_s=1800, threads=threads)
    assert state is not None  # rank 0's
    phases = [state.phases.search, state.phases.train, state.phases.finetune]
    seconds = {name: phase.seconds if phase is not None else 0.0 for name, phase in zip(PHASES, phases, strict=True)}
    return {"processes": processes, "threads_each": threads, "total": time.monotonic() - began, **seconds}


def last_router(run: Path) -> dict[str, torch.Tensor]:
    train = RunFolder(run).read_state().phases.train
    if train is None or train.checkpoint is None:
        sys.exit(f"{run} holds no training checkpoint")
    return {k: v for k, v in load_file(run / train.checkpoint.file).items() if k.startswith("router.")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--data", default=str(data_file(CALIBRATION_TEXT)))
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads of each process")
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=4, help="global batch")
    parser.add_argument("--search-batch", type=int, default=8)
    parser.add_argument("--ga-population", type=int, default=8)
    parser.add_argument("--ga-generations", type=int, default=2)
    parser.add_argument("--finetune-generations", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    options = TrainOptions(
        model=args.model,
        data=args.data,
        seq_len=args.seq_len,
        steps=args.steps,
        batch_size=args.batch_size,
        search_batch=args.search_batch,
        ga_population=args.ga_population,
        ga_generations=args.ga_generations,
        finetune_generations=args.finetune_generations,
    )
    settings = options.run_settings()
    root = Path(tempfile.mkdtemp(prefix="train-scaling-"))
    runs = [timed_run(options, root / f"p{n}", n, args.threads) for n in (1, args.processes)]
    one, many = (load_artifact(root / f"p{n}") for n in (1, args.processes))
    routers = [last_router(root / f"p{n}") for n in (1, args.processes)]
    router_diff = max(float((routers[0][k] - routers[1][k]).abs().max()) for k in routers[0])
    same_schedule = one.schedule.thousandths == many.schedule.thousandths

    print(f"\n{'processes x threads':<20} {'search s':>9} {'train s':>9} {'fine-tune s':>12} {'command s':>10}")
    for run in runs:
        label = f"{run['processes']} x {run['threads_each']}"
        print(f"{label:<20} {run['search']:>9.1f} {run['train']:>9.1f} {run['finetune']:>12.1f} {run['total']:>10.1f}")
    speedups = {phase: runs[0][phase] / runs[1][phase] for phase in (*PHASES, "total")}
    widths = (9, 9, 12, 10)
    print(f"{'speed-up':<20} " + " ".join(f"{speedups[p]:>{w - 1}.2f}x" for p, w in zip(speedups, widths, strict=True)))
    print(
        f"{settings.model}, seq {args.seq_len}, global batch {args.batch_size}, {args.steps} steps, search "
        f"{args.ga_population} x {args.ga_generations} generations, calibration batch {args.search_batch}; "
        f"same schedule: {same_schedule}; last-step routers differ by at most {router_diff:.2e}"
    )
    write_json(
        args.json,
        {
            "settings": settings.to_json(),
            "runs": runs,
            "speedups": speedups,
            "same_schedule": same_schedule,
            "router_max_abs_diff": router_diff,
            "cpu_count": os.cpu_count(),
        },
    )


if __name__ == "__main__":
    main()
