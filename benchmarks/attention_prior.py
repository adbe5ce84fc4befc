"""Attention-weighted router priors under monotone routing, against the static router, on three kinds of text.

Every learned row is `trainer.new_router(attention_weight=w)` untrained: the static priority plus
`w x (attention score - 1)`, routed monotone (a token skipped once stays skipped, so the attention
factor cannot bring back stale tokens). On a uniform schedule monotone routing freezes block 0's
choice, where the attention factor is still uniform, so the rows use rising knot schedules (first
and last knot; `KnotSpace`), where later blocks drop further tokens by the attention they receive.
Each row is scored on: wikitext-2 windows of 512 tokens (last 64 predictions), of 128 tokens (last
32), and 512-token blocks of the calibration text `train` reads; each KL with its standard error
and a paired 95% interval against the static router on the uniform schedule. `--qa-items N` also
scores arc_easy and piqa accuracy on N items each (their retention against dense).

    python benchmarks/attention_prior.py --windows 16 --qa-items 200 --json attention_prior.json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import calibration_data, heldout_totals, require_wikitext, versus_static, wikitext_windows, write_json

from ftp_deploy.data_root import data_root
from ftp_deploy.evaluation.adapters import DenseScoring, RoutedScoring
from ftp_deploy.evaluation.pipeline import load_tasks
from ftp_deploy.evaluation.runner import EvalSettings, prepare, score_task
from ftp_deploy.evaluation.scoring import Scorer, ScoringModel
from ftp_deploy.evaluation.tally import Tally
from ftp_deploy.flops import dense_block_weights
from ftp_deploy.formats.run_state import HeldoutRow
from ftp_deploy.models import load_base_model
from ftp_deploy.research.schedule_space import KnotSpace
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.heldout import scores_from_totals
from ftp_deploy.training.reference import DenseReference
from ftp_deploy.training.trainer import new_router

SINK = 1 / 16
# (name, first knot, last knot, sink fraction, attention weight or None for the static router)
ROWS: tuple[tuple[str, float | None, float | None, float, float | None], ...] = (
    ("static_uniform", None, None, 0.0, None),
    ("static_sink16_uniform", None, None, SINK, None),
    ("static_ramp_.25_.35", 0.25, 0.35, 0.0, None),
    ("static_sink16_ramp_.25_.35", 0.25, 0.35, SINK, None),
    ("attention8_ramp_.25_.35", 0.25, 0.35, 0.0, 8.0),
    ("attention128_ramp_.25_.35", 0.25, 0.35, 0.0, 128.0),
    ("sink16_attention8_ramp_.25_.35", 0.25, 0.35, SINK, 8.0),
    ("sink16_attention128_ramp_.25_.35", 0.25, 0.35, SINK, 128.0),
    ("sink16_attention8_ramp_.2_.4", 0.2, 0.4, SINK, 8.0),
)
TEXTS = (("wikitext_512", 512, 64), ("wikitext_128", 128, 32), ("calibration_512", 512, 64))


def routings(base: Any, sparsity: float) -> dict[str, RoutedModel]:
    layers = base.config.num_hidden_layers
    built = {}
    for name, first, last, sink, weight in ROWS:
        if first is None or last is None:
            schedule = Schedule.uniform(sparsity, layers)
        else:  # knots for the FLOP weights of one length serve every length: the weights are equal per block
            space = KnotSpace(sparsity, dense_block_weights(base.config, 512), knots=2, protect=0)
            schedule = space.schedule(np.array([first, last]))
        if weight is None:
            built[name] = RoutedModel(base, schedule, RouterSpec(kind="static", sink_fraction=sink))
        else:
            spec = RouterSpec(kind="learned", sink_fraction=sink)
            built[name] = RoutedModel(base, schedule, spec, "monotone", router=new_router(0, attention_weight=weight))
    return built


def accuracies(loaded: Any, models: dict[str, RoutedModel], items: int) -> dict[str, dict[str, Any]]:
    """arc_easy and piqa accuracy of dense and every routing on the same `items` items, with retention."""
    settings = EvalSettings()
    tasks = [prepare(t, loaded.tokenizer, settings, 8192) for t in load_tasks("arc_easy,piqa", data_root(), items)]
    scorers: dict[str, ScoringModel] = {"dense": DenseScoring(loaded.model)}
    scorers |= {name: RoutedScoring(model) for name, model in models.items()}
    found: dict[str, dict[str, Any]] = {}
    for name, model in scorers.items():
        scorer = Scorer(model, Tally(), settings.batch_tokens)
        found[name] = {p.task.name: score_task(scorer, p, settings) for p in tasks}
        ratios = [found[name][task]["acc"] / found["dense"][task]["acc"] for task in ("arc_easy", "piqa")]
        found[name]["retention"] = {"acc": float(np.mean(ratios))}
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--windows", type=int, default=16, help="512-token windows; twice as many 128-token ones")
    parser.add_argument("--qa-items", type=int, default=0, help="arc_easy and piqa items each (0: no accuracy)")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    require_wikitext()
    started = time.monotonic()
    loaded = load_base_model(args.model)
    base = loaded.model
    models = routings(base, args.sparsity)
    texts = {
        "wikitext_512": wikitext_windows(loaded.tokenizer, args.windows, 512),
        "wikitext_128": wikitext_windows(loaded.tokenizer, 2 * args.windows, 128),
        "calibration_512": calibration_data(loaded.tokenizer, 512, 0).train[: args.windows],
    }
    kl: dict[str, dict[str, HeldoutRow]] = {}
    for text, length, scored in TEXTS:
        references = [DenseReference(base, chunk, scored) for chunk in texts[text].split(4)]
        kl[text] = scores_from_totals(heldout_totals(references, models))
        print(f"\n{text}: {texts[text].shape[0]} sequences of {length} tokens, last {scored} predictions")
        for name, row in kl[text].items():
            print(f"{name:<36} KL {row.kl:.4f} +- {row.kl_stderr:.4f}  minus static uniform {versus_static(row)}")
    qa = accuracies(loaded, models, args.qa_items) if args.qa_items else {}
    if qa:
        print(f"\narc_easy / piqa accuracy, {args.qa_items} items each, and retention against dense")
        for name, per_task in qa.items():
            print(
                f"{name:<36} {per_task['arc_easy']['acc']:.3f} / {per_task['piqa']['acc']:.3f}  "
                f"retention {per_task['retention']['acc']:.1%}"
            )
    seconds = time.monotonic() - started
    print(f"\n{seconds:.0f} s, {torch.get_num_threads()} threads")
    write_json(
        args.json,
        {
            "settings": vars(args) | {"json": str(args.json)},
            "rows": [list(row) for row in ROWS],
            "kl": kl,
            "qa": qa,
            "seconds": seconds,
            "torch_threads": torch.get_num_threads(),
        },
    )


if __name__ == "__main__":
    main()
