"""Prefill wall time of SmolLM2: dense vs compact routing at sparsity 0.3 (static router).

Both compute logits for the last position only, as a prefill does; runs alternate between
dense and routed so drift on a shared machine hits both alike.

    python benchmarks/compact_speed.py --json compact_speed.json
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved_times, summarize, write_json  # noqa: E402

from ftp_deploy.flops import flop_ratio  # noqa: E402
from ftp_deploy.models import load_base_model  # noqa: E402
from ftp_deploy.routed_model import RoutedModel  # noqa: E402
from ftp_deploy.router import RouterSpec  # noqa: E402
from ftp_deploy.schedule import Schedule  # noqa: E402


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
    loaded = load_base_model(args.model)
    model = loaded.model
    schedule = Schedule.uniform(args.sparsity, model.config.num_hidden_layers)
    routed = RoutedModel(model, schedule, RouterSpec(kind="static"))
    generator = torch.Generator().manual_seed(0)
    figures: dict[str, object] = {
        "model": args.model,
        "sparsity": args.sparsity,
        "threads": args.threads,
        "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "results": {},
        "speedup": {},
    }
    print(f"{'T':>6} {'dense ms':>10} {'routed ms':>10} {'speedup':>8} {'FLOP bound':>10}")
    for seq_len in (int(t) for t in args.seq_lens.split(",")):
        ids = torch.randint(100, model.config.vocab_size, (1, seq_len), generator=generator)
        with torch.inference_mode():
            times = interleaved_times(
                {"dense": lambda: model(ids, logits_to_keep=1), "routed": lambda: routed(ids, logits_to_keep=1)},
                args.runs,
            )
        dense, sparse = summarize(times["dense"]), summarize(times["routed"])
        speedup = dense["median_s"] / sparse["median_s"]
        bound = 1 / flop_ratio(model.config, schedule, seq_len)
        figures["results"][str(seq_len)] = {"dense": dense, "routed": sparse, "flop_bound": bound}  # type: ignore[index]
        figures["speedup"][str(seq_len)] = speedup  # type: ignore[index]
        print(f"{seq_len:>6} {dense['median_s'] * 1e3:>10.1f} {sparse['median_s'] * 1e3:>10.1f} {speedup:>7.2f}x {bound:>9.2f}x")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
