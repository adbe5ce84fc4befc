"""What the attention factors do to routing: the static priority, then routers that also use them.

Every router here is a `FactorRouter` (the learned router's function class) with hand-set
weights: the trainer's starting router, whose keep logit is `10 * (position - s_l)` (the
static priority), plus `weight * factor` for the attention score or the attention rank.
A router training run can only move between such routers, so this shows which direction
the factors take the routing. Scored on wikitext-2 test windows (last 64 predictions,
FTP_SPEC 1b), uniform schedule. "re-entries" counts the (token, block) pairs computed after
the token skipped an earlier block, as a share of all computed pairs: such a token enters
the block with a hidden state that missed the updates of the blocks it skipped. Last, routers
that keep the first fraction of the sequence in every block as well (more attention sinks,
as StreamingLLM keeps), a shape the position factor alone can express.

    python benchmarks/router_factors.py --json router_factors.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import cast

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import require_wikitext, wikitext_windows, write_json

from ftp_deploy.fidelity import SCORED_POSITIONS, Fidelity, logits_to_keep, scored_logits, scored_targets
from ftp_deploy.formats.record import to_json
from ftp_deploy.models import load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import FACTOR_NAMES, FactorRouter
from ftp_deploy.routing import reentries
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.reference import DenseReference
from ftp_deploy.training.trainer import ATTENTION_OFFSET, ROUTER_SPEC, new_router

FACTOR_WEIGHTS = {"attention_score": (0.05, 0.25, 1.0), "attention_rank": (0.25, 1.0, 4.0)}
PREFIX_FRACTIONS = (1 / 64, 1 / 16, 1 / 8, 1 / 4)
# A hidden unit GELU(PREFIX_SLOPE * (fraction - position)) is large inside the prefix and ~0
# beyond it; PREFIX_BONUS lifts that prefix far above the static priority's [-10, 10] range.
PREFIX_SLOPE = 5000.0
PREFIX_BONUS = 100.0


def static_plus_unit(factor: str, input_weight: float, bias: float, output_weight: float) -> FactorRouter:
    """The static-priority router plus `output_weight * GELU(input_weight * factor + bias)` in its keep logit."""
    router = new_router(seed=0)
    first, last = cast(nn.Linear, router.net[0]), cast(nn.Linear, router.net[2])
    with torch.no_grad():
        first.weight[1].zero_()
        first.weight[1, FACTOR_NAMES.index(factor)] = input_weight
        first.bias[1] = bias
        last.weight[0, 1] = output_weight
    return router


def prefix_router(fraction: float) -> FactorRouter:
    """The static-priority router that also keeps the first `fraction` of the sequence in every block."""
    return static_plus_unit("position", -PREFIX_SLOPE, PREFIX_SLOPE * fraction, PREFIX_BONUS)


def factor_router(factor: str | None, weight: float) -> FactorRouter:
    """The static-priority router plus `weight * factor` in its keep logit (a constant shift aside)."""
    return new_router(seed=0) if factor is None else static_plus_unit(factor, 1.0, ATTENTION_OFFSET, weight)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--windows", type=int, default=16, help="wikitext-2 test windows scored")
    parser.add_argument("--window-len", type=int, default=512)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    require_wikitext()

    loaded = load_base_model(args.model)
    base = loaded.model
    schedule = Schedule.uniform(args.sparsity, base.config.num_hidden_layers)
    variants: list[tuple[str | None, float]] = [(None, 0.0)]
    variants += [(factor, weight) for factor, weights in FACTOR_WEIGHTS.items() for weight in weights]
    variants += [("prefix", fraction) for fraction in PREFIX_FRACTIONS]
    routers = [prefix_router(w) if f == "prefix" else factor_router(f, w) for f, w in variants]
    routed = [RoutedModel(base, schedule, ROUTER_SPEC, router=router) for router in routers]
    totals = [Fidelity() for _ in variants]
    counts = [[0, 0] for _ in variants]
    started = time.monotonic()
    for chunk in wikitext_windows(loaded.tokenizer, args.windows, args.window_len).split(4):
        reference = DenseReference(base, chunk, SCORED_POSITIONS)
        targets = scored_targets(chunk, SCORED_POSITIONS)
        for model, fidelity, count in zip(routed, totals, counts, strict=True):
            with torch.inference_mode():
                out = model(chunk, logits_to_keep=logits_to_keep(SCORED_POSITIONS))
            fidelity.add(torch.cat(reference.dense), scored_logits(out.logits, SCORED_POSITIONS), targets)
            reentered, computed = reentries(out.keep, torch.ones_like(chunk, dtype=torch.bool))
            count[0] += reentered
            count[1] += computed
    seconds = time.monotonic() - started

    rows = []
    print(f"{'keep logit':<44} {'KL':>8} {'top-1':>7} {'perplexity':>10} {'re-entries':>10}")
    for (factor, weight), fidelity, (reentered, computed) in zip(variants, totals, counts, strict=True):
        summary = fidelity.summary()
        if factor is None:
            label = "10 (position - s) [static priority]"
        elif factor == "prefix":
            label = f"10 (position - s), first {weight:.4g} of tokens kept"
        else:
            label = f"10 (position - s) + {weight:g} {factor}"
        share = reentered / computed
        figures = f"{summary.kl:>8.4f} {summary.top1_agreement:>6.1%} {summary.perplexity:>10.2f}"
        print(f"{label:<44} {figures} {share:>9.1%}")
        rows.append({"factor": factor, "weight": weight, **to_json(summary), "reentry_share": share})
    print(
        f"\ndense perplexity {totals[0].summary().dense_perplexity:.2f}; {args.windows} windows of "
        f"{args.window_len} tokens, last {SCORED_POSITIONS} predictions; "
        f"uniform sparsity {args.sparsity:g}; {seconds:.0f} s"
    )
    write_json(
        args.json,
        {
            "model": args.model,
            "sparsity": args.sparsity,
            "windows": args.windows,
            "window_len": args.window_len,
            "scored": SCORED_POSITIONS,
            "rows": rows,
            "seconds": seconds,
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
