"""Accuracy retention of FTP and its baselines: dense, random, shortgpt, static and ftp.

N items each of arc_easy, arc_challenge, piqa, boolq and openbookqa (a fixed, seeded subset),
and wikitext2 perplexity on the scored positions of --windows windows. Baselines run at the
sparsity of each run given with --run (its searched schedule), or, without a run, at each
uniform --sparsity; then ftp is skipped. Dense is scored once and shared by every sparsity.

    python benchmarks/retention.py --limit 50 --json retention.json --run RUN_03 --run RUN_04
    python benchmarks/retention.py --limit 50 --sparsity 0.3,0.4
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json

from ftp_deploy.console import RichProgress
from ftp_deploy.data_root import data_root
from ftp_deploy.evaluation.methods import BASELINES, DENSE
from ftp_deploy.evaluation.pipeline import evaluate_model, load_tasks, load_trained_run, weights_sha256
from ftp_deploy.evaluation.report import markdown_table
from ftp_deploy.evaluation.runner import EvalSettings
from ftp_deploy.evaluation.shortgpt import calibration_file
from ftp_deploy.evaluation.tasks import short_name
from ftp_deploy.fidelity import SCORED_POSITIONS
from ftp_deploy.formats.eval_results import EvalResults, MethodResult
from ftp_deploy.formats.record import to_json
from ftp_deploy.models import LoadedModel, load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.schedule import Schedule

CHOICE_TASKS = "arc_easy,arc_challenge,piqa,boolq,openbookqa"


def settings_to_evaluate(args: argparse.Namespace) -> Iterator[tuple[LoadedModel, Schedule, str, RoutedModel | None]]:
    """(base model, schedule, where it came from, trained model or None), one per sparsity."""
    if args.run:
        for run in args.run:
            loaded, ftp, artifact = load_trained_run(run, args.model)
            print(f"{run}: baselines at the run's schedule (mean sparsity {artifact.schedule.mean():.3f})")
            yield loaded, artifact.schedule, "searched", ftp
        return
    loaded = load_base_model(args.model or "smollm2-135m")
    for sparsity in args.sparsity:
        print(f"no --run given: ftp is skipped; baselines at uniform sparsity {sparsity:g}")
        yield loaded, Schedule.uniform(sparsity, loaded.model.config.num_hidden_layers), "uniform", None


def print_results(results: EvalResults) -> None:
    details = results.retention_details
    print(markdown_table(results))
    print(f"headline average over: {', '.join(map(short_name, details.headline_tasks)) or 'none'}")
    for task, why in details.other_tasks.items():
        print(f"not in the average: {task} ({why})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="base model (default: the run's, else smollm2-135m)")
    parser.add_argument(
        "--run", type=Path, action="append", help="a trained run folder (repeatable); without one ftp is skipped"
    )
    parser.add_argument(
        "--sparsity",
        type=lambda text: [float(v) for v in text.split(",")],
        default=[0.3],
        help="comma-separated uniform token sparsities when no --run is given",
    )
    parser.add_argument("--limit", type=int, default=50, help="items per multiple-choice task")
    parser.add_argument("--windows", type=int, default=20, help="wikitext2 windows")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--scored-tokens", type=int, default=SCORED_POSITIONS)
    parser.add_argument("--data-dir", type=Path, default=data_root())
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    settings = EvalSettings(args.seq_len, args.scored_tokens)
    settings.check()
    tasks = load_tasks(CHOICE_TASKS, args.data_dir, args.limit) + load_tasks("wikitext2", args.data_dir, args.windows)
    calibration = calibration_file(args.data_dir)
    evaluations: list[tuple[EvalResults, float, bool]] = []  # (results, schedule sparsity, ftp evaluated)
    for loaded, schedule, source, ftp in settings_to_evaluate(args):
        measured: dict[str, MethodResult] = {}
        if evaluations:
            first = evaluations[0][0]
            if weights_sha256(loaded.model) != first.model.weights_sha256:
                sys.exit("every --run must use the same base model (dense is scored once)")
            measured = {DENSE: first.methods[DENSE]}
        with RichProgress(transient=True) as progress:
            results = evaluate_model(
                loaded, tasks, list(BASELINES), schedule, source, settings, progress, calibration, ftp, measured
            )
        print_results(results)
        evaluations.append((results, schedule.mean(), ftp is not None))
        # Written after every sparsity, so an interrupted long run keeps what it measured.
        write_json(args.json, summary(evaluations, args, time.perf_counter() - start))
    print(f"wall time {time.perf_counter() - start:.0f} s, {args.threads} threads")


def summary(
    evaluations: list[tuple[EvalResults, float, bool]], args: argparse.Namespace, wall: float
) -> dict[str, Any]:
    return {
        "retention": {f"{sparsity:.3f}": results.retention for results, sparsity, _ in evaluations},
        "evaluations": [
            {**to_json(results), "ftp": "evaluated" if ftp else "skipped: no --run", "schedule_sparsity": sparsity}
            for results, sparsity, ftp in evaluations
        ],
        "runs": [str(r) for r in args.run or []],
        "wall_seconds_total": wall,
        "threads": args.threads,
    }


if __name__ == "__main__":
    main()
