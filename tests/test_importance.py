"""Importance labels at the routed point and the ranking fit of the router, on a tiny model."""

from __future__ import annotations

import torch

from ftp_deploy.research.importance import fit_router, importance_batch, ranking_loss
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.trainer import new_router
from tests.conftest import random_batch, tiny_model


def test_ranking_loss_is_low_when_logits_order_tokens_as_labels_do() -> None:
    labels = torch.tensor([[0.0, 1.0, 2.0, 3.0, 4.0]])
    free = torch.ones_like(labels, dtype=torch.bool)
    agree, disagree = 10 * labels, -10 * labels
    generator = torch.Generator().manual_seed(0)
    assert float(ranking_loss(agree, labels, free, 64, generator)) < 1e-3
    assert float(ranking_loss(disagree, labels, free, 64, generator)) > 5


def test_labels_cover_every_block_and_token_and_the_fit_moves_the_router() -> None:
    base = tiny_model("llama")
    spec = RouterSpec(kind="learned", sink_fraction=0.125)
    router = new_router(0)
    routed = RoutedModel(base, Schedule.from_sparsities((0.2, 0.3, 0.3, 0.4)), spec, router=router)
    ids, _ = random_batch(2, 24, None)
    batch = importance_batch(routed, ids, scored=8)
    assert len(batch.labels) == len(batch.factors) == len(batch.prior) == 4
    assert batch.labels[0].shape == ids.shape and batch.factors[0].shape == (*ids.shape, 4)
    assert all(float(label.abs().sum()) > 0 for label in batch.labels)
    # The sink prefix (3 of 24 tokens) and the last token are forced: not the fit's to choose.
    assert not bool(batch.free[:, :3].any()) and not bool(batch.free[:, -1].any())
    before = [p.detach().clone() for p in router.parameters()]
    history = fit_router(router, [batch], steps=30, lr=1e-2, guide_weight=0.0, pairs=128)
    assert history[-1] < history[0]
    assert any(not torch.equal(b, p) for b, p in zip(before, router.parameters(), strict=True))
