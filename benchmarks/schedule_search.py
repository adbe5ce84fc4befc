"""Schedule search in the knot space with CMA-ES: SmolLM2 at 0.3, static router (+ sink prefix).

Fitness is the KL to dense on a fixed calibration batch (dense log-probs computed once, only the
scored positions' logits). The winner is validated on held-out wikitext-2 windows against the
uniform schedule with a paired bootstrap interval, and kept only if it wins there; the fitness
curve (best so far against evaluations) is written as a PNG.

    python benchmarks/schedule_search.py --evaluations 48 --knots 4 --json schedule_search.json --plot search.png
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path

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
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.config import TrainConfig
from ftp_deploy.training.heldout import scores_from_totals
from ftp_deploy.training.reference import DenseReference
from ftp_deploy.training.schedule_space import KnotSpace, cma_search


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
    started = time.monotonic()
    result = cma_search(
        lambda s: calibration.kl(RoutedModel(base, s, spec)),
        space,
        args.evaluations,
        args.sigma,
        args.population,
        args.seed,
    )
    search_seconds = time.monotonic() - started
    uniform = Schedule.uniform(args.sparsity, base.config.num_hidden_layers)
    rows = {
        "static_uniform": RoutedModel(base, uniform, spec),
        "knots_flat": RoutedModel(base, space.schedule(space.start), spec),
        "searched": RoutedModel(base, result.best, spec),
    }
    windows = wikitext_windows(loaded.tokenizer, args.windows, args.window_len)
    results = scores_from_totals(heldout_totals(dense_references(base, windows), rows))
    won = results["searched"]["kl_minus"]["static_uniform"]
    kept = "searched" if won["high"] < 0 else "uniform"
    print(
        f"calibration KL: flat knots {result.start_fitness:.4f}, best {result.best_fitness:.4f} after "
        f"{result.evaluations} evaluations ({search_seconds:.0f} s; dense reference {dense_seconds:.0f} s once)"
    )
    print(f"best knots {[round(k, 3) for k in result.best_knots]}; schedule {list(result.best.thousandths)}")
    for name, row in results.items():
        print(f"held-out {name:<16} KL {row['kl']:.4f} +- {row['kl_stderr']:.4f}  minus uniform {versus_static(row)}")
    print(f"kept: {kept} (the searched schedule is kept only if its held-out interval is below uniform's)")
    if args.plot is not None:
        atomic_write_bytes(args.plot, _curve_png(result.curve, results["static_uniform"]["kl"]))
    write_json(
        args.json,
        {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "search": result.to_json(),
            "search_seconds": search_seconds,
            "dense_reference_seconds": dense_seconds,
            "heldout": results,
            "kept": kept,
            "torch_threads": torch.get_num_threads(),
        },
    )


def _curve_png(curve: list[list[float]], uniform_heldout: float) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2))
    axis.plot([e for e, _ in curve], [f for _, f in curve], marker=".")
    axis.set_xlabel("fitness evaluations")
    axis.set_ylabel("best calibration KL so far")
    axis.set_title(f"CMA-ES over knots (held-out uniform KL {uniform_heldout:.4f})", fontsize="medium")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    plt.close(figure)
    return buffer.getvalue()


if __name__ == "__main__":
    main()
