"""Accuracy retention of FTP and its baselines: dense, random, shortgpt, static and ftp.

N items each of arc_easy, arc_challenge, piqa, boolq and openbookqa (a fixed, seeded subset),
and wikitext2 perplexity on the scored positions of --windows windows. Baselines run at the
sparsity of the run given with --run (its searched schedule), or, without a run, at a uniform
--sparsity; then ftp is skipped.

    python benchmarks/retention.py --limit 50 --sparsity 0.3 --json retention.json [--run RUN_DIR]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.progress import Progress

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json

from ftp_deploy.evaluation.methods import BASELINES
from ftp_deploy.evaluation.pipeline import evaluate_model, load_tasks, load_trained_run
from ftp_deploy.evaluation.report import markdown_table
from ftp_deploy.evaluation.runner import EvalSettings
from ftp_deploy.evaluation.shortgpt import calibration_file
from ftp_deploy.evaluation.tasks import default_data_dir, short_name
from ftp_deploy.fidelity import SCORED_POSITIONS
from ftp_deploy.models import load_base_model
from ftp_deploy.schedule import Schedule

CHOICE_TASKS = "arc_easy,arc_challenge,piqa,boolq,openbookqa"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="base model (default: the run's, else smollm2-135m)")
    parser.add_argument("--run", type=Path, default=None, help="a trained run folder; without it ftp is skipped")
    parser.add_argument("--sparsity", type=float, default=0.3, help="uniform token sparsity when no --run is given")
    parser.add_argument("--limit", type=int, default=50, help="items per multiple-choice task")
    parser.add_argument("--windows", type=int, default=20, help="wikitext2 windows")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--scored-tokens", type=int, default=SCORED_POSITIONS)
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    settings = EvalSettings(args.seq_len, args.scored_tokens)
    settings.check()
    tasks = load_tasks(CHOICE_TASKS, args.data_dir, args.limit) + load_tasks("wikitext2", args.data_dir, args.windows)
    calibration = calibration_file(args.data_dir)
    if args.run is not None:
        loaded, ftp, artifact = load_trained_run(args.run, args.model)
        schedule, source = artifact.schedule, "searched"
        print(f"baselines at the run's schedule (mean sparsity {schedule.mean():.3f}); --sparsity is not used")
    else:
        loaded, ftp = load_base_model(args.model or "smollm2-135m"), None
        schedule = Schedule.uniform(args.sparsity, loaded.model.config.num_hidden_layers)
        source = "uniform"
        print(f"no --run given: ftp is skipped; baselines at uniform sparsity {args.sparsity:g}")
    with Progress(console=Console(stderr=True), transient=True) as progress:
        results = evaluate_model(loaded, tasks, list(BASELINES), schedule, source, settings, progress, calibration, ftp)
    details = results["retention_details"]
    print(markdown_table(results))
    print(f"headline average over: {', '.join(map(short_name, details['headline_tasks'])) or 'none'}")
    for task, why in details["other_tasks"].items():
        print(f"not in the average: {task} ({why})")
    wall = time.perf_counter() - start
    print(f"wall time {wall:.0f} s (scoring {results['wall_seconds']:.0f} s), {args.threads} threads")
    results |= {"run": str(args.run) if args.run else None, "ftp": "evaluated" if ftp else "skipped: no --run"}
    write_json(args.json, results | {"wall_seconds_total": wall, "threads": args.threads})


if __name__ == "__main__":
    main()
