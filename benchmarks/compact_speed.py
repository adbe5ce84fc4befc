"""Prefill wall time of SmolLM2: dense vs compact routing at sparsity 0.3 (static router).

Both compute logits for the last position only, as a prefill does; runs alternate between
dense and routed so drift on a shared machine hits both alike.

    python benchmarks/compact_speed.py --json compact_speed.json
"""

from __future__ import annotations

import argparse
import platform
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved_times, summarize, write_json

from ftp_deploy.flops import flop_ratio
from ftp_deploy.models import load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--seq-lens", default="512,1024")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    model = load_base_model(args.model).model
    schedule = Schedule.uniform(args.sparsity, model.config.num_hidden_layers)
    routed = RoutedModel(model, schedule, RouterSpec(kind="static"))
    generator = torch.Generator().manual_seed(0)
    results: dict[str, Any] = {}
    speedups: dict[str, float] = {}
    print(f"{'T':>6} {'dense ms':>10} {'routed ms':>10} {'speedup':>8} {'FLOP bound':>10}")
    for seq_len in (int(t) for t in args.seq_lens.split(",")):
        ids = torch.randint(100, model.config.vocab_size, (1, seq_len), generator=generator)
        with torch.inference_mode():
            times = interleaved_times(
                {"dense": partial(model, ids, logits_to_keep=1), "routed": partial(routed, ids, logits_to_keep=1)},
                args.runs,
            )
        dense, sparse = summarize(times["dense"]), summarize(times["routed"])
        speedup = dense["median_s"] / sparse["median_s"]
        bound = 1 / flop_ratio(model.config, schedule, seq_len)
        results[str(seq_len)] = {"dense": dense, "routed": sparse, "flop_bound": bound}
        speedups[str(seq_len)] = speedup
        dense_ms, routed_ms = dense["median_s"] * 1e3, sparse["median_s"] * 1e3
        print(f"{seq_len:>6} {dense_ms:>10.1f} {routed_ms:>10.1f} {speedup:>7.2f}x {bound:>9.2f}x")
    write_json(
        args.json,
        {
            "model": args.model,
            "sparsity": args.sparsity,
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__,
            "results": results,
            "speedup": speedups,
        },
    )


if __name__ == "__main__":
    main()
