"""Does a router fitted to per-(block, token) importance labels beat its prior? SmolLM2 at 0.3, uniform schedule.

The learned router starts as the static order plus the attention-sink prefix (step 0 equals the
prior); labels come from one forward/backward per calibration batch at the routed point
(ftp_deploy.research.importance), the router is fitted to rank tokens as they do, then optionally
a few straight-through steps run; the calibration KL decides which router is kept (never worse
than step 0). Held-out wikitext-2 windows score every row on the same windows, with standard
errors and paired intervals against the plain static router, in top-k and monotone routing.

    python benchmarks/importance_fit.py --blocks 8 --fit-steps 200 --st-steps 4 --json importance_fit.json
"""

from __future__ import annotations

import argparse
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

from ftp_deploy.models import load_base_model
from ftp_deploy.research.importance import fit_router, importance_batch
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.config import LossWeights, TrainConfig
from ftp_deploy.training.heldout import scores_from_totals
from ftp_deploy.training.reference import DenseReference
from ftp_deploy.training.trainer import RouterTrainer, new_router


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--sink-fraction", type=float, default=1 / 16)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=8, help="calibration blocks labelled (2 per backward)")
    parser.add_argument("--fit-steps", type=int, default=200)
    parser.add_argument("--fit-lr", type=float, default=1e-3)
    parser.add_argument("--guide-weight", type=float, default=1.0)
    parser.add_argument("--st-steps", type=int, default=0, help="straight-through steps after the fit")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    require_wikitext()
    timings: dict[str, float] = {}
    loaded = load_base_model(args.model)
    base = loaded.model
    for parameter in base.parameters():
        parameter.requires_grad_(False)
    data = calibration_data(loaded.tokenizer, args.seq_len, args.seed)
    uniform = Schedule.uniform(args.sparsity, base.config.num_hidden_layers)
    spec = RouterSpec(kind="learned", sink_fraction=args.sink_fraction)
    scored = TrainConfig.scored
    calibration = DenseReference(base, data.train[: TrainConfig.search_batch], scored)

    prior_router = new_router(args.seed)
    router = new_router(args.seed)
    routed = RoutedModel(base, uniform, spec, router=router)
    calibration_kl = {"step0": calibration.kl(routed)}
    started = time.monotonic()
    batches = [importance_batch(routed, chunk, scored) for chunk in data.train[: args.blocks].split(2)]
    timings["labels"] = time.monotonic() - started
    started = time.monotonic()
    fit_history = fit_router(router, batches, args.fit_steps, args.fit_lr, args.guide_weight, seed=args.seed)
    timings["fit"] = time.monotonic() - started
    calibration_kl["fitted"] = calibration.kl(routed)
    if args.st_steps:
        trainer = RouterTrainer(
            base, uniform, data.train, TrainConfig(steps=args.st_steps), LossWeights(), router, args.seed, spec=spec
        )
        trainer.validate(calibration.kl)
        started = time.monotonic()
        for _ in range(args.st_steps):
            trainer.train_step()
        timings["straight_through"] = time.monotonic() - started
        calibration_kl["straight_through"] = trainer.validate(calibration.kl)
        trainer.use_best()

    plain = RouterSpec(kind="static")
    rows: dict[str, RoutedModel] = {
        "static_uniform": RoutedModel(base, uniform, plain),
        "static_sink": RoutedModel(base, uniform, RouterSpec(kind="static", sink_fraction=args.sink_fraction)),
        "learned_step0": RoutedModel(base, uniform, spec, router=prior_router),
    }
    for mode in ("topk", "monotone"):
        rows[f"fitted_{mode}"] = RoutedModel(base, uniform, spec, mode, router=router)
    windows = wikitext_windows(loaded.tokenizer, args.windows, args.window_len)
    started = time.monotonic()
    totals = heldout_totals(dense_references(base, windows), rows)
    timings["heldout"] = time.monotonic() - started
    results = scores_from_totals(totals)
    print("calibration KL: " + ", ".join(f"{k} {v:.4f}" for k, v in calibration_kl.items()))
    print(f"fit loss: first {fit_history[0]:.4f}, last {fit_history[-1]:.4f}; seconds: {timings}")
    print(f"{'routing':<24} {'KL +- s.e.':>18}  KL minus static uniform [95%]")
    for name, row in results.items():
        print(f"{name:<24} {row.kl:>8.4f} +- {row.kl_stderr:.4f}  {versus_static(row)}")
    write_json(
        args.json,
        {
            "settings": vars(args) | {"json": str(args.json)},
            "calibration_kl": calibration_kl,
            "fit_loss": fit_history,
            "seconds": timings,
            "results": results,
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
