"""Router training quality: SmolLM2 at sparsity 0.3, trained on the calibration text, scored on wikitext-2.

Trains one run (schedule search, router training, schedule fine-tune) with `ftp-deploy
train`'s library call, then scores on held-out wikitext-2 test text (512-token windows,
the last 64 predictions of each, FTP_SPEC 1b), in one pass over the same windows: dense;
(a) random routing, uniform schedule; (b) static router, uniform; (c) static router,
searched schedule; (d) the trained router with the searched and fine-tuned schedule.

    python benchmarks/train_quality.py --json train_quality.json
"""

from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import WIKITEXT, wikitext_windows, write_json

from ftp_deploy.artifacts import load_artifact
from ftp_deploy.data_root import data_file
from ftp_deploy.fidelity import SCORED_POSITIONS, Fidelity
from ftp_deploy.models import load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.config import CALIBRATION_TEXT
from ftp_deploy.training.data import DataConfig
from ftp_deploy.training.pipeline import run_training
from ftp_deploy.training.reference import DenseReference
from ftp_deploy.training.search import SearchConfig
from ftp_deploy.training.settings import FINETUNE_SEARCH, RunSettings
from ftp_deploy.training.trainer import TrainConfig

ROWS = (
    ("random_uniform", "(a) random routing, uniform schedule"),
    ("static_uniform", "(b) static router, uniform schedule"),
    ("static_searched", "(c) static router, searched schedule"),
    ("trained", "(d) trained router, searched + fine-tuned schedule"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--data", default=str(data_file(CALIBRATION_TEXT)))
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--steps", type=int, default=TrainConfig.steps)
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    parser.add_argument("--ga-population", type=int, default=SearchConfig.population)
    parser.add_argument("--ga-generations", type=int, default=SearchConfig.generations)
    parser.add_argument("--finetune-generations", type=int, default=FINETUNE_SEARCH.generations)
    parser.add_argument("--time-budget", type=float, default=None, help="minutes for the training run")
    parser.add_argument("--windows", type=int, default=32, help="512-token wikitext-2 windows scored")
    parser.add_argument("--window-len", type=int, default=512)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="run folder (default: a temporary one)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if not WIKITEXT.is_file():
        sys.exit(f"wikitext-2 test text not found at {WIKITEXT}")

    settings = RunSettings(
        model=args.model,
        data=args.data,
        sparsity=args.sparsity,
        seed=args.seed,
        data_config=DataConfig(seq_len=args.seq_len),
        search=SearchConfig(population=args.ga_population, generations=args.ga_generations),
        finetune=SearchConfig(
            population=FINETUNE_SEARCH.population,
            generations=args.finetune_generations,
            mutation_sigma=FINETUNE_SEARCH.mutation_sigma,
            init_sigma=FINETUNE_SEARCH.init_sigma,
        ),
        train=TrainConfig(steps=args.steps, batch_size=args.batch_size),
    )
    out = args.out or Path(tempfile.mkdtemp(prefix="train-quality-"))
    started = time.monotonic()
    state = run_training(settings, out, time_budget=args.time_budget)
    train_seconds = time.monotonic() - started

    loaded = load_base_model(args.model)
    base = loaded.model
    uniform = Schedule.uniform(args.sparsity, base.config.num_hidden_layers)
    searched = Schedule(tuple(state["phases"]["search"]["best_thousandths"]))
    routed = {
        "random_uniform": RoutedModel(base, uniform, RouterSpec(kind="random", seed=args.seed)),
        "static_uniform": RoutedModel(base, uniform, RouterSpec(kind="static")),
        "static_searched": RoutedModel(base, searched, RouterSpec(kind="static")),
        "trained": load_artifact(out).build(base),
    }
    totals = {name: Fidelity() for name in routed}
    windows = wikitext_windows(loaded.tokenizer, args.windows, args.window_len)
    eval_started = time.monotonic()
    for chunk in windows.split(4):
        reference = DenseReference(base, chunk, SCORED_POSITIONS)  # dense once per chunk, shared by all four
        for name, model in routed.items():
            reference.fidelity(model, totals[name])
    eval_seconds = time.monotonic() - eval_started

    results = {name: totals[name].summary() for name in routed}
    dense_ppl = results["trained"]["dense_perplexity"]
    kls = [results[name]["kl"] for name, _ in ROWS]
    ordered = all(a > b for a, b in itertools.pairwise(kls))
    within = results["trained"]["perplexity"] <= 1.08 * dense_ppl
    print(f"{'routing':<52} {'perplexity':>10} {'vs dense':>9} {'KL':>8} {'top-1':>7}")
    print(f"{'dense':<52} {dense_ppl:>10.2f}")
    for name, label in ROWS:
        row = results[name]
        change = row["perplexity"] / dense_ppl - 1
        print(f"{label:<52} {row['perplexity']:>10.2f} {change:>+8.1%} {row['kl']:>8.4f} {row['top1_agreement']:>6.1%}")
    phases = state["phases"]
    print(
        f"\n{args.windows} windows of {args.window_len} tokens, last {SCORED_POSITIONS} predictions scored; "
        f"training run {train_seconds:.0f} s (search {phases['search']['seconds']:.0f} s, training "
        f"{phases['train']['seconds']:.0f} s for {phases['train']['checkpoint']['step']} steps, fine-tune "
        f"{phases['finetune']['seconds']:.0f} s), scoring {eval_seconds:.0f} s; run folder {out}"
    )
    print(
        f"targets: KL (d) < (c) < (b) < (a): {'met' if ordered else 'MISSED'}; "
        f"(d) perplexity within 8% of dense: {'met' if within else 'MISSED'}"
    )
    write_json(
        args.json,
        {
            "model": args.model,
            "sparsity": args.sparsity,
            "settings": settings.to_json(),
            "windows": args.windows,
            "window_len": args.window_len,
            "scored": SCORED_POSITIONS,
            "dense_perplexity": dense_ppl,
            "results": results,
            "searched_thousandths": list(searched.thousandths),
            "final_thousandths": list(load_artifact(out).schedule.thousandths),
            "train_seconds": train_seconds,
            "phase_seconds": {name: phases[name]["seconds"] for name in ("search", "train", "finetune")},
            "steps_done": phases["train"]["checkpoint"]["step"],
            "eval_seconds": eval_seconds,
            "kl_order_met": ordered,
            "perplexity_within_8pct": within,
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
