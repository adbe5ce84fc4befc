"""How small a calibration batch ranks schedules as a large one does: the search's cost per fitness evaluation.

Scores a fixed set of candidate schedules (the uniform one and seeded knot schedules of the kind
the searches visit) on --blocks calibration blocks once, block by block, then asks of every
smaller batch (the first n blocks): does it rank the candidates as all the blocks do (Kendall's
tau), and does it pick the same best one? A search's fitness evaluation costs about n times one
block's routed forward, so the smallest n that ranks alike is the cheapest sound fitness.

    python benchmarks/calibration_size.py --blocks 32 --candidates 12 --json calibration_size.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import calibration_data, write_json

from ftp_deploy.fidelity import SCORED_POSITIONS
from ftp_deploy.flops import dense_block_weights
from ftp_deploy.models import load_base_model
from ftp_deploy.research.schedule_space import KnotSpace
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.reference import DenseReference


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-a of two score lists over the same candidates."""
    pairs = list(itertools.combinations(range(len(a)), 2))
    concordant = sum(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j]) for i, j in pairs)
    return float(concordant / len(pairs))


def candidate_schedules(space: KnotSpace, count: int, spread: float, seed: int) -> list[Schedule]:
    """The flat (uniform) schedule, then `count - 1` distinct knot schedules around it."""
    rng = np.random.default_rng(seed)
    found = {space.schedule(space.start).thousandths: space.schedule(space.start)}
    while len(found) < count:
        schedule = space.schedule(space.start + rng.uniform(-spread, spread, space.knots))
        found.setdefault(schedule.thousandths, schedule)
    return list(found.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--blocks", type=int, default=32, help="calibration blocks, the reference ranking")
    parser.add_argument("--candidates", type=int, default=12)
    parser.add_argument("--knots", type=int, default=4)
    parser.add_argument("--spread", type=float, default=0.12, help="knot offsets drawn from [-spread, spread]")
    parser.add_argument("--sink-fraction", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    loaded = load_base_model(args.model)
    base = loaded.model
    blocks = calibration_data(loaded.tokenizer, args.seq_len, args.seed).train[: args.blocks]
    if blocks.shape[0] < args.blocks:
        sys.exit(f"the calibration text gives only {blocks.shape[0]} blocks of {args.seq_len} tokens")
    reference = DenseReference(base, blocks, SCORED_POSITIONS)
    space = KnotSpace(args.sparsity, dense_block_weights(base.config, args.seq_len), args.knots, protect=0)
    spec = RouterSpec(kind="static", sink_fraction=args.sink_fraction)
    candidates = candidate_schedules(space, args.candidates, args.spread, args.seed)
    started = time.monotonic()
    per_block = [reference.fidelity(RoutedModel(base, s, spec)).window_kl for s in candidates]
    seconds_per_block = (time.monotonic() - started) / (len(candidates) * args.blocks)
    full = [float(np.mean(kls)) for kls in per_block]
    sizes = [n for n in (1, 2, 4, 8, 16, 32, 64) if n < args.blocks]
    rows = []
    for n in sizes:
        partial = [float(np.mean(kls[:n])) for kls in per_block]
        rows.append(
            {
                "blocks": n,
                "kendall_tau": kendall_tau(partial, full),
                "same_best": int(np.argmin(partial)) == int(np.argmin(full)),
                "best_rank_in_full": int(np.argsort(np.argsort(full))[int(np.argmin(partial))]) + 1,
                "seconds_per_evaluation": n * seconds_per_block,
            }
        )
    print(
        f"{len(candidates)} schedules, {args.blocks} blocks of {args.seq_len} tokens, {seconds_per_block:.2f} s a block"
    )
    print(f"full-batch KL: uniform {full[0]:.4f}; best {min(full):.4f}; worst {max(full):.4f}")
    print(f"{'blocks':>6} {'tau':>6} {'same best':>9} {'its rank':>8} {'s / evaluation':>14}")
    for row in rows:
        print(
            f"{row['blocks']:>6} {row['kendall_tau']:>6.2f} {row['same_best']!s:>9} {row['best_rank_in_full']:>8} "
            f"{row['seconds_per_evaluation']:>14.1f}"
        )
    write_json(
        args.json,
        {
            "settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
            "candidates": [list(s.thousandths) for s in candidates],
            "full_kl": full,
            "per_block_kl": per_block,
            "sizes": rows,
            "seconds_per_block": seconds_per_block,
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
