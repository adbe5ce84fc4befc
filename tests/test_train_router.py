"""Router training (FTP_SPEC section 6) on a tiny LLaMA: frozen base, losses, exact resume."""

from __future__ import annotations

import pytest
import torch

from ftp_deploy.errors import ConfigError
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.losses import LossWeights, sparsity_loss, static_keep
from ftp_deploy.training.reference import DenseReference
from ftp_deploy.training.trainer import ROUTER_SPEC, RouterTrainer, TrainConfig, new_router
from tests.conftest import VOCAB, random_batch, tiny_model

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEDULE = Schedule.from_sparsities([0.2, 0.5, 0.3, 0.4])
CONFIG = TrainConfig(steps=6, batch_size=2, lr=2e-2, scored=8)


def blocks(count: int = 5, seq_len: int = 24) -> torch.Tensor:
    return torch.randint(4, VOCAB, (count, seq_len), generator=torch.Generator().manual_seed(1))


def trainer(base: torch.nn.Module | None = None, weights: LossWeights | None = None) -> RouterTrainer:
    return RouterTrainer(
        base or tiny_model(), SCHEDULE, blocks(), CONFIG, weights or LossWeights(guide_decay=0.5), new_router(0), 0
    )


@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_the_initial_router_routes_exactly_like_the_static_one(padding: str | None) -> None:
    base = tiny_model()
    ids, mask = random_batch(2, 31, padding)
    with torch.no_grad():
        static = RoutedModel(base, SCHEDULE, RouterSpec(kind="static"))(ids, mask)
        learned = RoutedModel(base, SCHEDULE, ROUTER_SPEC, router=new_router(3))(ids, mask)
    assert all(torch.equal(a, b) for a, b in zip(static.keep, learned.keep, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(static_keep(mask, SCHEDULE), static.keep, strict=True))


def test_an_attention_prior_adds_its_weight_times_the_score_above_uniform() -> None:
    """At the uniform share (score 1) the prior's logit is the static one's; each unit above adds `weight`."""
    factors = torch.tensor([[0.2, 1.0, 0.5, 0.3], [0.2, 3.0, 0.5, 0.3], [0.9, 0.0, 0.1, 0.3]])
    with torch.no_grad():
        static, prior = new_router(0)(factors), new_router(0, attention_weight=8.0)(factors)
    assert prior[0] == pytest.approx(float(static[0]), abs=1e-3)
    assert prior[1] - static[1] == pytest.approx(16.0, abs=1e-2)
    assert prior[2] - static[2] == pytest.approx(-8.0, abs=1e-1)  # GELU bends a little near 4


def test_the_guide_loss_targets_an_attention_priors_own_decisions() -> None:
    base, ids = tiny_model(), blocks(2, 24)
    mask = torch.ones_like(ids)
    run = RouterTrainer(
        base, SCHEDULE, blocks(), CONFIG, LossWeights(), new_router(0, attention_weight=1000.0), 0,
        routing_mode="monotone", prior=new_router(0, attention_weight=1000.0),
    )  # fmt: skip
    with torch.no_grad():
        prior = RoutedModel(base, SCHEDULE, ROUTER_SPEC, "monotone", router=new_router(0, attention_weight=1000.0))
        expected = prior(ids, mask).keep
    targets = run.guide_targets(ids, mask)
    assert all(torch.equal(a, b) for a, b in zip(targets, expected, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(targets, static_keep(mask, SCHEDULE), strict=True))
    for _ in range(2):
        run.train_step()
    assert all(torch.equal(a, b) for a, b in zip(run.guide_targets(ids, mask), expected, strict=True))


def test_the_llm_stays_frozen_and_bit_identical() -> None:
    base = tiny_model()
    for parameter in base.parameters():
        parameter.requires_grad_(True)  # a caller's unfrozen model is frozen by the trainer
    before = {name: t.clone() for name, t in base.state_dict().items()}
    run = trainer(base)
    router_before = [p.clone() for p in run.router.parameters()]
    for _ in range(3):
        run.train_step()
    assert not any(p.requires_grad for p in base.parameters())
    assert all(torch.equal(before[name], t) for name, t in base.state_dict().items())
    assert any(not torch.equal(a, b) for a, b in zip(router_before, run.router.parameters(), strict=True))


def test_guide_weight_decays_to_zero() -> None:
    weights = LossWeights(guide=2.0, guide_decay=0.5)
    schedule = [weights.guide_weight(step, 10) for step in range(10)]
    assert schedule[0] == 2.0 and schedule[4] > 0
    assert schedule == sorted(schedule, reverse=True) and schedule[5:] == [0.0] * 5
    run = trainer(weights=weights)
    measured = [run.train_step().guide_weight for _ in range(CONFIG.steps)]
    assert measured[0] == 2.0 and measured[-3:] == [0.0] * 3


def test_training_measures_what_compact_inference_gives() -> None:
    """The straight-through gate is 1 or 0 in value: the step's KL is the compact-mode KL."""
    run = trainer()
    for _ in range(2):
        run.train_step()  # leave the static-like start, so the router's own routing is checked
    batch = run.batch(run.step)
    compact = DenseReference(run.base, batch, CONFIG.scored).kl(
        RoutedModel(run.base, SCHEDULE, ROUTER_SPEC, router=run.router)
    )
    assert abs(run.train_step().distill - compact) <= 1e-5


def test_restored_tensors_continue_with_identical_losses() -> None:
    straight = trainer()
    losses = [straight.train_step().loss for _ in range(CONFIG.steps)]
    first = trainer()
    for _ in range(3):
        first.train_step()
    saved = {name: t.clone() for name, t in first.state_tensors().items()}
    resumed = RouterTrainer(tiny_model(), SCHEDULE, blocks(), CONFIG, LossWeights(guide_decay=0.5), new_router(9), 0)
    resumed.load_state_tensors(saved, 3)
    assert [resumed.train_step().loss for _ in range(3)] == losses[3:]


def test_batches_cycle_through_seeded_epochs() -> None:
    run = trainer()
    seen = torch.cat([run.batch(step) for step in range(5)])  # 10 picks from 5 blocks: two epochs
    rows = [tuple(r.tolist()) for r in seen]
    assert len(set(rows[:5])) == 5 and set(rows[:5]) == set(rows[5:])
    assert torch.equal(run.batch(3), trainer().batch(3))


def test_sparsity_loss_is_one_sided() -> None:
    achieved = torch.tensor([0.1, 0.6, 0.3, 0.4])  # only block 0 skips less than required (0.1 < 0.2)
    assert float(sparsity_loss(achieved, SCHEDULE)) == pytest.approx(0.1)


def test_bad_training_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError):
        TrainConfig(steps=0)
    with pytest.raises(ConfigError):
        LossWeights(guide_decay=0.0)


def test_the_best_validated_router_is_the_one_kept() -> None:
    run = trainer()
    scores = iter([0.5, 0.2, 0.3])
    run.validate(lambda routed: next(scores))
    run.train_step()
    run.validate(lambda routed: next(scores))
    kept = {name: t.clone() for name, t in run.router.state_dict().items()}
    run.train_step()
    run.validate(lambda routed: next(scores))
    assert (run.best_step, run.best_kl) == (1, 0.2)
    assert any(not torch.equal(kept[name], t) for name, t in run.router.state_dict().items())
    run.use_best()
    assert all(torch.equal(kept[name], t) for name, t in run.router.state_dict().items())


def test_dense_logits_are_computed_once_for_every_candidate() -> None:
    base = tiny_model()
    calls: list[int] = []
    forward = base.forward

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return forward(*args, **kwargs)

    base.forward = counting  # type: ignore[method-assign]
    reference = DenseReference(base, blocks(), CONFIG.scored)
    kls = [
        reference.kl(RoutedModel(base, Schedule.from_sparsities([s, s, s, s]), RouterSpec(kind="static")))
        for s in (0.0, 0.3, 0.6)
    ]
    assert len(calls) == 2  # one dense pass per chunk of 4 blocks, none per candidate
    assert kls[0] == pytest.approx(0.0, abs=1e-6) and kls[0] < kls[1] < kls[2]
