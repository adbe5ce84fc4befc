"""Compact mode cuts real work: per-block FLOPs scale with the kept count."""

from __future__ import annotations

import torch

from ftp_deploy.flops import block_flops, flop_ratio, measured_flops
from ftp_deploy.plugins.token_compaction.reference import gather_rows
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec, token_positions
from ftp_deploy.schedule import Schedule
from tests.conftest import tiny_model


def _block_call_flops(model: torch.nn.Module, tokens: int) -> int:
    layer = model.model.layers[0]
    hidden = torch.randn(1, tokens, model.config.hidden_size)
    positions = torch.arange(tokens).unsqueeze(0)
    cos, sin = model.model.rotary_emb(hidden, positions)
    return measured_flops(layer, hidden, position_embeddings=(cos, sin))


def test_block_flops_scale_with_kept_tokens() -> None:
    model = tiny_model()
    dense = _block_call_flops(model, 200)
    for kept in (140, 100, 60):
        compact = _block_call_flops(model, kept)
        # Linear layers dominate: FLOPs fall at least in proportion to the kept count.
        assert compact <= dense * kept / 200 * 1.001
        analytic_linear = block_flops(model.config, kept) - block_flops(model.config, 0)
        assert compact >= 0.9 * (analytic_linear - 2 * 2 * 48 * kept * (kept + 1) / 2)


def test_routed_forward_flops_follow_the_schedule() -> None:
    base = tiny_model()
    ids = torch.randint(4, 90, (1, 200))
    schedule = Schedule.uniform(0.3, 4)
    routed = RoutedModel(base, schedule, RouterSpec(kind="static"))
    dense_flops = measured_flops(base, ids, logits_to_keep=1)
    routed_flops = measured_flops(routed, ids, logits_to_keep=1)
    ratio = routed_flops / dense_flops
    assert ratio < 0.75
    assert abs(ratio - flop_ratio(base.config, schedule, 200)) < 0.08


def test_gather_cos_sin_positions_are_original() -> None:
    base = tiny_model()
    mask = torch.ones(1, 10, dtype=torch.long)
    positions = token_positions(mask)
    hidden = torch.zeros(1, 10, 48)
    cos, _ = base.model.rotary_emb(hidden, positions)
    index = torch.tensor([[0, 7, 9]])
    expected, _ = base.model.rotary_emb(hidden[:, :3], index)
    assert torch.allclose(gather_rows(cos, index), expected)
