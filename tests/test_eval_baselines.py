"""Baselines: at sparsity 0 each is dense; ShortGPT removes the least influential layers, FLOP-matched."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from ftp_deploy.errors import ConfigError
from ftp_deploy.evaluation.baselines import build_methods
from ftp_deploy.evaluation.methods import BASELINES, parse_baselines
from ftp_deploy.evaluation.runner import EvalSettings, PreparedTask, evaluate_methods, prepare
from ftp_deploy.evaluation.scoring import Scorer
from ftp_deploy.evaluation.shortgpt import LayerSkipModel, block_influence, lowest_influence, removal_count
from ftp_deploy.evaluation.tasks import load_task
from ftp_deploy.formats.eval_results import Compute
from ftp_deploy.progress import NO_PROGRESS
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import random_batch, tiny_model, tiny_tokenizer

SETTINGS = EvalSettings(seq_len=32, scored_tokens=8)


@pytest.fixture
def tasks(tmp_path: Path) -> list[PreparedTask]:
    generator = torch.Generator().manual_seed(0)

    def words(n: int) -> str:
        return " ".join(f"w{i}" for i in torch.randint(0, 90, (n,), generator=generator).tolist())

    items = [
        {"context": words(6 + i), "choices": [" " + words(1 + (i + j) % 4) for j in range(3)], "label": i % 3}
        for i in range(8)
    ]
    (tmp_path / "mc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (tmp_path / "text.txt").write_text(words(100))
    loaded = [
        load_task(f"mc:{tmp_path / 'mc.jsonl'}", None, None),
        load_task(f"ppl:{tmp_path / 'text.txt'}", None, None),
    ]
    return [prepare(task, tiny_tokenizer(), SETTINGS, 512) for task in loaded]


def calibration() -> torch.Tensor:
    return torch.randint(4, 90, (2, 32), generator=torch.Generator().manual_seed(1))


def test_every_baseline_at_sparsity_zero_is_dense(tasks: list[PreparedTask]) -> None:
    base = tiny_model()
    methods = build_methods(list(BASELINES), base, Schedule.uniform(0.0, 4), SETTINGS.seq_len, "uniform", calibration())
    results = evaluate_methods(methods, tasks, SETTINGS, NO_PROGRESS)
    mc, ppl = (p.task.name for p in tasks)
    dense = results["dense"].tasks
    assert results["shortgpt"].removed_layers == []
    for name in ("random", "static", "shortgpt"):
        got = results[name].tasks
        for key in ("acc", "acc_norm", "predictions", "predictions_norm"):
            assert getattr(got[mc], key) == getattr(dense[mc], key), (name, key)
        assert got[ppl].ppl_scored == pytest.approx(dense[ppl].ppl_scored, rel=1e-6)
        assert got[ppl].ppl_all == pytest.approx(dense[ppl].ppl_all, rel=1e-6)
        assert results[name].measured == Compute(0.0, 1.0)
    # The same batches and kernels as dense, so the log-likelihoods are identical.
    dense_scores = Scorer(methods[0].model).loglikelihoods(tasks[0].requests)
    assert Scorer(methods[3].model).loglikelihoods(tasks[0].requests) == dense_scores


def test_shortgpt_removes_the_layer_that_changes_least() -> None:
    base = tiny_model()
    with torch.no_grad():  # layer 2 adds nothing to the residual stream: Block Influence 0
        base.model.layers[2].self_attn.o_proj.weight.zero_()
        base.model.layers[2].mlp.down_proj.weight.zero_()
    influence = block_influence(base, calibration())
    assert influence[2] == pytest.approx(0.0, abs=1e-6)
    assert min(influence[i] for i in (0, 1, 3)) > 1e-3
    assert lowest_influence(influence, 1) == (2,)
    assert lowest_influence([0.3, 0.1, 0.2, 0.4], 2) == (1, 2)


def test_removed_layers_match_the_routed_flop_saving() -> None:
    config = tiny_model().config
    assert removal_count(config, Schedule.uniform(0.0, 4), 512) == 0
    assert removal_count(config, Schedule.uniform(0.5, 4), 16) == 2
    # At 512 tokens attention outweighs the tiny model's linear layers, and routing cuts it
    # quadratically: half the tokens save nearly two thirds of the FLOPs.
    assert removal_count(config, Schedule.uniform(0.5, 4), 512) == 3
    assert removal_count(config, Schedule.from_sparsities([0.0, 0.0, 0.0, 0.4]), 16) == 0
    assert removal_count(config, Schedule.uniform(0.9, 4), 16) == 3  # never every layer


def test_layer_skip_equals_a_model_whose_layer_is_identity() -> None:
    base = tiny_model()
    identity = copy.deepcopy(base)
    with torch.no_grad():
        identity.model.layers[1].self_attn.o_proj.weight.zero_()
        identity.model.layers[1].mlp.down_proj.weight.zero_()
    ids, mask = random_batch(2, 17, "left")
    skipped = LayerSkipModel(base, [1])
    with torch.no_grad():
        expected = identity(ids, attention_mask=mask, position_ids=(mask.cumsum(1) - 1).clamp(min=0)).logits
        got = skipped(ids, mask, keep_last=17)
    valid = mask.bool()
    assert (got.logits - expected)[valid].abs().max().item() <= 1e-5
    assert got.kept.tolist() == [[17, 0, 17, 17], [12, 0, 12, 12]]


def test_routed_baselines_skip_what_the_schedule_says(tasks: list[PreparedTask]) -> None:
    base = tiny_model()
    searched = Schedule.from_sparsities([0.2, 0.4, 0.6, 0.8])
    methods = build_methods(["dense", "random", "static", "shortgpt"], base, searched, 32, "searched", calibration())
    by_name = {m.name: m for m in methods}
    assert by_name["static"].setup["schedule_thousandths"] == [200, 400, 600, 800]
    assert by_name["random"].setup["schedule_thousandths"] == [500] * 4
    assert by_name["shortgpt"].setup["schedule_sparsity"] == 0.5
    results = evaluate_methods(methods, tasks[1:], SETTINGS, NO_PROGRESS)
    # Perplexity windows are 32 tokens: block l keeps 32 - (32 * n_l) // 1000.
    assert results["static"].measured.token_sparsity == pytest.approx((6 + 12 + 19 + 25) / 128)
    assert results["shortgpt"].measured == Compute(0.5, 0.5)
    assert results["random"].measured.flop_ratio < 0.55


def test_routed_model_is_what_the_static_baseline_runs() -> None:
    base = tiny_model()
    schedule = Schedule.uniform(0.5, 4)
    (static,) = build_methods(["static"], base, schedule, 32, "uniform")
    ids, mask = random_batch(1, 20, None)
    reference = RoutedModel(base, schedule, RouterSpec(kind="static"))(ids, mask).logits
    assert torch.equal(static.model(ids, mask, keep_last=20).logits, reference)


def test_unknown_baseline_lists_the_known_ones() -> None:
    with pytest.raises(ConfigError, match=r"unknown baseline.*llmpruner.*dense, random, static, shortgpt"):
        parse_baselines("static,llmpruner")
    assert parse_baselines("shortgpt,static") == ["dense", "shortgpt", "static"]
