"""Schedule search: CMA-ES in the knot space against the per-block GA, SmolLM2 at 0.3, static router (+ sink prefix).

Fitness is the KL to dense on a fixed calibration batch (dense log-probs computed once, only the
scored positions' logits). `--method both` runs the two searches on the same batch with the same
number of fitness evaluations: CMA-ES over a few sorted knots (`schedule_space.cma_search`) and the
genetic search over every block's sparsity that `ftp-deploy train` runs (`search.genetic_search`).
Each winner is validated on held-out wikitext-2 windows against the uniform schedule with a paired
bootstrap interval, and kept only if it wins there; the fitness curves (best so far against
evaluations) are written as a PNG.

    python benchmarks/schedule_search.py --method both --evaluations 48 --json schedule_search.json --plot search.png
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    calibration_data,
    dense_references,
    heldout_totals,
    require_wikitext,
    versus_static,
    wikitext_windows,
    write_json,
)

from ftp_deploy.fileio import atomic_write_bytes
from ftp_deploy.flops import dense_block_weights
from ftp_deploy.models import load_base_model
from ftp_deploy.research.schedule_space import KnotSpace, cma_search
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.config import TrainConfig
from ftp_deploy.training.heldout import scores_from_totals
from ftp_deploy.training.reference import DenseReference
from ftp_deploy.training.search import ScheduleSpace, SearchConfig, genetic_search


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--sink-fraction", type=float, default=1 / 16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--calibration-blocks", type=int, default=TrainConfig.search_batch)
    parser.add_argument("--knots", type=int, default=4)
    parser.add_argument("--protect", type=int, default=1, help="dense blocks at each end")
    parser.add_argument("--evaluations", type=int, default=48)
    parser.add_argument("--population", type=int, default=6)
    parser.add_argument("--sigma", type=float, default=0.05)
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window-len", type=int, default=512)
    parser.add_argument("--method", choices=("cma", "ga", "both"), default="cma")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--plot", type=Path, default=None)
    args = parser.parse_args()
    require_wikitext()
    loaded = load_base_model(args.model)
    base = loaded.model
    data = calibration_data(loaded.tokenizer, args.seq_len, args.seed)
    spec = RouterSpec(kind="static", sink_fraction=args.sink_fraction)
    started = time.monotonic()
    calibration = DenseReference(base, data.train[: args.calibration_blocks], TrainConfig.scored)
    dense_seconds = time.monotonic() - started
    space = KnotSpace(args.sparsity, dense_block_weights(base.config, args.seq_len), args.knots, args.protect)
    uniform = Schedule.uniform(args.sparsity, base.config.num_hidden_layers)
    searches: dict[str, dict[str, Any]] = {}
    if args.method in ("cma", "both"):
        searches["cma"] = run_cma(args, space, lambda s: calibration.kl(RoutedModel(base, s, spec)))
    if args.method in ("ga", "both"):
        weights = dense_block_weights(base.config, args.seq_len)
        searches["ga"] = run_ga(args, uniform, weights, lambda s: calibration.kl(RoutedModel(base, s, spec)))
    rows = {"static_uniform": RoutedModel(base, uniform, spec)}
    if args.protect:
        rows["knots_flat"] = RoutedModel(base, space.schedule(space.start), spec)
    rows |= {f"searched_{name}": RoutedModel(base, found["best"], spec) for name, found in searches.items()}
    windows = wikitext_windows(loaded.tokenizer, args.windows, args.window_len)
    results = scores_from_totals(heldout_totals(dense_references(base, windows), rows))
    print(f"dense reference {dense_seconds:.0f} s once")
    for name, found in searches.items():
        won = results[f"searched_{name}"].kl_minus["static_uniform"]
        found["kept"] = "searched" if won.high < 0 else "uniform"
        print(
            f"{name}: calibration KL start {found['start_fitness']:.4f}, best {found['best_fitness']:.4f} after "
            f"{found['evaluations']} evaluations ({found['seconds']:.0f} s); schedule {list(found['best'].thousandths)}"
        )
    for name, row in results.items():
        print(f"held-out {name:<16} KL {row.kl:.4f} +- {row.kl_stderr:.4f}  minus uniform {versus_static(row)}")
    for name, found in searches.items():
        print(f"kept ({name}): {found['kept']} (a searched schedule is kept only if its held-out interval is below 0)")
    if args.plot is not None:
        curves = {name: found["curve"] for name, found in searches.items()}
        atomic_write_bytes(args.plot, _curve_png(curves, results["static_uniform"].kl))
    write_json(
        args.json,
        {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "searches": {
                name: {k: list(v.thousandths) if isinstance(v, Schedule) else v for k, v in found.items()}
                for name, found in searches.items()
            },
            "dense_reference_seconds": dense_seconds,
            "heldout": results,
            "torch_threads": torch.get_num_threads(),
        },
    )


def run_cma(args: argparse.Namespace, space: KnotSpace, fitness: Callable[[Schedule], float]) -> dict[str, Any]:
    started = time.monotonic()
    result = cma_search(fitness, space, args.evaluations, args.sigma, args.population, args.seed)
    return {
        "best": result.best,
        "best_fitness": result.best_fitness,
        "start_fitness": result.start_fitness,
        "best_knots": result.best_knots,
        "evaluations": result.evaluations,
        "curve": result.curve,
        "seconds": time.monotonic() - started,
    }


def run_ga(
    args: argparse.Namespace, uniform: Schedule, weights: list[float], fitness: Callable[[Schedule], float]
) -> dict[str, Any]:
    """`train`'s genetic search from the uniform schedule, stopped after the same number of evaluations."""
    curve: list[list[float]] = []

    def counted(schedule: Schedule) -> float:
        value = fitness(schedule)
        best = min(value, curve[-1][1]) if curve else value
        curve.append([len(curve) + 1, best])
        return value

    started = time.monotonic()
    generations = args.evaluations  # more than enough: the evaluation budget stops it
    result = genetic_search(
        counted,
        ScheduleSpace(args.sparsity, weights, monotone=True),
        uniform,
        SearchConfig(population=args.population, generations=generations, elites=min(2, args.population - 1)),
        args.seed,
        should_stop=lambda: len(curve) >= args.evaluations,
    )
    return {
        "best": result.best,
        "best_fitness": result.best_fitness,
        "start_fitness": result.start_fitness,
        "evaluations": result.evaluations,
        "curve": curve,
        "seconds": time.monotonic() - started,
    }


def _curve_png(curves: dict[str, list[list[float]]], uniform_heldout: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = {"cma": "CMA-ES over knots", "ga": "GA over every block"}
    figure, axis = plt.subplots(figsize=(5, 3.2))
    for name, curve in curves.items():
        axis.plot([e for e, _ in curve], [f for _, f in curve], marker=".", label=labels[name])
    axis.set_xlabel("fitness evaluations")
    axis.set_ylabel("best calibration KL so far")
    axis.legend(fontsize="small")
    axis.set_title(f"schedule search (held-out uniform KL {uniform_heldout:.4f})", fontsize="medium")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
