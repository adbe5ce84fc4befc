"""Routing priors on held-out wikitext-2: the static router with and without an attention-sink prefix,
and trained routers (run folders) in top-k and monotone routing, all on the same windows and schedule.

Each row's KL carries its standard error over windows and a paired bootstrap 95% interval against
the plain static router (FTP_SPEC section 4), so a difference inside the noise says so.

    python benchmarks/router_prior.py --sparsity 0.3 --windows 16 --run RUN_DIR --json router_prior.json
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import dense_references, heldout_totals, require_wikitext, versus_static, wikitext_windows, write_json

from ftp_deploy.artifacts import load_artifact
from ftp_deploy.fidelity import SCORED_POSITIONS
from ftp_deploy.formats.record import to_json
from ftp_deploy.models import load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.routing import reentries
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.heldout import scores_from_totals


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--sinks", default="0.03125,0.0625,0.125", help="sink fractions of the static rows")
    parser.add_argument("--run", type=Path, action="append", default=[], help="trained run folder (repeatable)")
    parser.add_argument("--windows", type=int, default=16)
    parser.add_argument("--window-len", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    require_wikitext()
    loaded = load_base_model(args.model)
    base = loaded.model
    uniform = Schedule.uniform(args.sparsity, base.config.num_hidden_layers)
    routings = {"static_uniform": RoutedModel(base, uniform, RouterSpec(kind="static"))}
    for fraction in (float(f) for f in args.sinks.split(",") if f.strip()):
        routings[f"static_sink_{fraction:g}"] = RoutedModel(
            base, uniform, RouterSpec(kind="static", sink_fraction=fraction)
        )
    for run in args.run:
        artifact = load_artifact(run)
        for mode in ("topk", "monotone"):
            trained = replace(artifact, routing_mode=mode).build(base)
            routings[f"{run.name}_{mode}"] = trained
            routings[f"{run.name}_{mode}_uniform"] = RoutedModel(
                base, uniform, trained.router_spec, mode, router=trained.router
            )
    windows = wikitext_windows(loaded.tokenizer, args.windows, args.window_len)
    reentered = dict.fromkeys(routings, 0)
    started = time.monotonic()
    totals = heldout_totals(dense_references(base, windows), routings)
    for chunk in windows.split(4):
        for name, model in routings.items():
            if model.router is not None:  # the static order on a flat schedule never re-admits a token
                with torch.no_grad():
                    reentered[name] += reentries(model(chunk).keep, torch.ones_like(chunk, dtype=torch.bool))[0]
    results = scores_from_totals(totals)
    print(f"{'routing':<40} {'KL +- s.e.':>18} {'re-entries':>10}  KL minus static uniform [95%]")
    for name, row in results.items():
        print(f"{name:<40} {row.kl:>8.4f} +- {row.kl_stderr:.4f} {reentered[name]:>10}  {versus_static(row)}")
    seconds = time.monotonic() - started
    print(f"{args.windows} windows of {args.window_len} tokens, last {SCORED_POSITIONS} scored; {seconds:.0f} s")
    write_json(
        args.json,
        {
            "model": args.model,
            "sparsity": args.sparsity,
            "windows": args.windows,
            "window_len": args.window_len,
            "results": {name: to_json(row) | {"reentries": reentered[name]} for name, row in results.items()},
            "seconds": seconds,
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
