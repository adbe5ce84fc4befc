"""Routed forward (FTP_SPEC sections 1-4) on tiny LLaMA, Mistral, Qwen2 and Qwen3 models."""

from __future__ import annotations

import pytest
import torch

from ftp_deploy.errors import ConfigError
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec, token_positions
from ftp_deploy.routing import reentries, valid_first
from ftp_deploy.schedule import Schedule
from tests.conftest import random_batch, tiny_model

SCHEDULE = (0.3, 0.5, 0.0, 0.25)


def routed(arch: str, kind: str = "learned", mode: str = "topk", schedule=SCHEDULE, seed: int = 0) -> RoutedModel:
    model = RoutedModel(tiny_model(arch), Schedule.from_sparsities(schedule), RouterSpec(kind=kind), mode)
    if model.router is not None:
        # Keeps later tokens (logit > 0 past about 60% of the sequence) with seeded noise on
        # every factor, so threshold routing both keeps and skips.
        torch.manual_seed(seed)
        first, second = model.router.net[0], model.router.net[2]
        with torch.no_grad():
            torch.nn.init.normal_(first.weight, std=0.3)
            first.weight[:, 0] += 4.0
            first.bias.zero_()
            second.weight.fill_(1.0 / second.weight.shape[1])
            second.bias.fill_(-2.0)
    return model


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("padding", [None, "left", "right"])
@pytest.mark.parametrize(("kind", "mode"), [("learned", "topk"), ("learned", "threshold"), ("static", "topk")])
def test_masked_and_compact_agree(arch: str, padding: str | None, kind: str, mode: str) -> None:
    model = routed(arch, kind, mode)
    ids, mask = random_batch(2, 23, padding)
    with torch.no_grad():
        compact = model(ids, mask, mode="compact")
        masked = model(ids, mask, mode="masked")
    valid = mask.bool()
    assert (compact.logits - masked.logits)[valid].abs().max().item() <= 1e-4
    for keep_c, keep_m in zip(compact.keep, masked.keep, strict=True):
        assert torch.equal(keep_c, keep_m)
    # The routing really skipped tokens somewhere, so the agreement is not trivial.
    assert any(bool((~keep & valid).any()) for keep in compact.keep)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize("padding", [None, "left"])
def test_sparsity_zero_reproduces_hf(arch: str, padding: str | None) -> None:
    model = routed(arch, "static", schedule=(0.0,) * 4)
    ids, mask = random_batch(2, 19, padding)
    with torch.no_grad():
        reference = model.base(ids, attention_mask=mask, position_ids=token_positions(mask)).logits
        ours = model(ids, mask).logits
    valid = mask.bool()
    assert (reference - ours)[valid].abs().max().item() <= 1e-5


def test_static_router_keeps_first_and_most_recent() -> None:
    model = routed("llama", "static")
    seq_len = 30
    ids, mask = random_batch(2, seq_len, None)
    with torch.no_grad():
        out = model(ids, mask)
    for block, keep in enumerate(out.keep):
        k = model.schedule.kept(block, seq_len)
        expected = torch.zeros(seq_len, dtype=torch.bool)
        expected[0] = True
        expected[seq_len - (k - 1) :] = True
        assert int(expected.sum()) == k
        for row in keep:
            assert torch.equal(row, expected), f"block {block}"


def test_reentries_count_tokens_computed_after_a_skip() -> None:
    keep = [torch.tensor([[1, 1, 0, 1, 0]]), torch.tensor([[1, 0, 1, 1, 0]]), torch.tensor([[1, 1, 1, 1, 1]])]
    valid = torch.tensor([[1, 1, 1, 1, 0]]).bool()
    # Block 1 recomputes token 2; block 2 recomputes tokens 1 and 2; token 4 is padding.
    assert reentries([k.bool() for k in keep], valid) == (3, 3 + 3 + 4)


def test_static_router_with_a_rising_schedule_never_lets_a_token_reenter() -> None:
    model = RoutedModel(tiny_model("llama"), Schedule.from_sparsities((0.1, 0.3, 0.3, 0.5)), RouterSpec(kind="static"))
    ids, mask = random_batch(2, 30, "left")
    with torch.no_grad():
        out = model(ids, mask)
    reentered, computed = reentries(out.keep, mask.bool())
    assert reentered == 0 and computed > 0
    falling = RoutedModel(model.base, Schedule.from_sparsities((0.5, 0.1, 0.3, 0.3)), RouterSpec(kind="static"))
    with torch.no_grad():
        assert reentries(falling(ids, mask).keep, mask.bool())[0] > 0


def test_static_router_with_left_padding_keeps_valid_tokens_first() -> None:
    model = routed("llama", "static")
    ids, mask = random_batch(2, 30, "left")
    with torch.no_grad():
        out = model(ids, mask)
    first_valid = int((mask[1] == 0).sum())
    for block, keep in enumerate(out.keep):
        k = model.schedule.kept(block, 30)
        valid_count = int(mask[1].sum())
        # Padding is routed out first: it is kept only once every valid token is.
        assert int((keep[1] & mask[1].bool()).sum()) == min(k, valid_count)
        assert bool(keep[1, first_valid])


@pytest.mark.parametrize("mode", ["topk", "threshold"])
def test_first_and_last_valid_token_always_kept(mode: str) -> None:
    model = routed("qwen2", "learned", mode, schedule=(0.9, 0.9, 0.9, 0.9))
    for padding in (None, "left", "right"):
        ids, mask = random_batch(2, 25, padding)
        with torch.no_grad():
            out = model(ids, mask)
        first = mask.argmax(1)
        last = 24 - mask.flip(1).argmax(1)
        for keep in out.keep:
            assert bool(keep[torch.arange(2), first].all()) and bool(keep[torch.arange(2), last].all())


@pytest.mark.parametrize("padding", ["left", "right"])
def test_padding_never_influences_valid_tokens(padding: str) -> None:
    model = routed("llama", "learned")
    ids, mask = random_batch(2, 21, padding)
    other = ids.masked_fill(mask == 0, 7)
    with torch.no_grad():
        a = model(ids, mask).logits
        b = model(other, mask).logits
    valid = mask.bool()
    assert torch.equal(a[valid], b[valid])


def test_threshold_routing_matches_the_sequence_alone() -> None:
    """With data-dependent K, a padded row is routed exactly as the same tokens unpadded."""
    model = routed("llama", "learned", "threshold")
    ids, mask = random_batch(2, 24, "right")
    valid_len = int(mask[1].sum())
    with torch.no_grad():
        batched = model(ids, mask).logits[1, :valid_len]
        alone = model(ids[1:, :valid_len]).logits[0]
    assert (batched - alone).abs().max().item() <= 1e-4


def test_gradients_reach_the_router_in_masked_mode() -> None:
    model = routed("llama", "learned")
    ids, mask = random_batch(2, 20, "left")
    out = model(ids, mask, mode="masked", gate_gradient=True)
    out.logits[mask.bool()].logsumexp(-1).mean().backward()
    assert model.router is not None
    grads = [p.grad for p in model.router.parameters()]
    assert all(g is not None and bool(g.abs().sum() > 0) for g in grads)
    assert all(p.grad is None for p in model.base.parameters())


def test_gate_gradient_does_not_change_values() -> None:
    model = routed("llama", "learned")
    ids, mask = random_batch(2, 20, None)
    with torch.no_grad():
        plain = model(ids, mask, mode="masked").logits
    with_gate = model(ids, mask, mode="masked", gate_gradient=True).logits.detach()
    assert (plain - with_gate).abs().max().item() <= 1e-5


def test_random_router_is_seeded() -> None:
    ids, mask = random_batch(2, 20, None)
    with torch.no_grad():
        a = routed("llama", "random")(ids, mask).keep
        b = routed("llama", "random")(ids, mask).keep
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_invalid_settings_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="schedule has 3 blocks"):
        RoutedModel(tiny_model(), Schedule.from_sparsities([0.1, 0.2, 0.3]), RouterSpec(kind="static"))
    with pytest.raises(ConfigError, match="threshold routing needs the learned router"):
        RoutedModel(tiny_model(), Schedule.uniform(0.3, 4), RouterSpec(kind="static"), "threshold")
    with pytest.raises(ConfigError, match="outside"):
        Schedule.uniform(0.95, 4)
    with pytest.raises(ConfigError, match="outside"):
        Schedule.uniform(-0.1, 4)


def test_router_is_small() -> None:
    model = routed("llama")
    assert model.router is not None
    assert sum(p.numel() for p in model.router.parameters()) == 4 * 64 + 64 + 64 + 1


@pytest.mark.parametrize("padding", [None, "left"])
def test_sink_prefix_is_kept_in_every_block_and_masked_agrees_with_compact(padding: str | None) -> None:
    seq_len, fraction = 30, 0.2  # ceil(0.2 * valid) leading valid tokens
    base = tiny_model("llama")
    spec = RouterSpec(kind="static", sink_fraction=fraction)
    model = RoutedModel(base, Schedule.from_sparsities(SCHEDULE), spec)
    plain = RoutedModel(base, Schedule.from_sparsities(SCHEDULE), RouterSpec(kind="static"))
    ids, mask = random_batch(2, seq_len, padding)
    with torch.no_grad():
        out, without = model(ids, mask), plain(ids, mask)
        masked = model(ids, mask, mode="masked")
    # Valid positions: what padding's own slots compute is never read (RoutedModel.run_layer_causal).
    valid_rows = mask.bool()
    assert torch.allclose(out.logits[valid_rows], masked.logits[valid_rows], atol=1e-4)
    for row in range(2):
        valid = torch.nonzero(mask[row]).flatten()
        sink = valid[: int(torch.ceil(torch.tensor(fraction * len(valid))))]
        for block, (keep, plain_keep) in enumerate(zip(out.keep, without.keep, strict=True)):
            assert bool(keep[row, sink].all()), f"block {block}"
            # The same number of tokens is kept: the prefix displaces the oldest recent tokens.
            assert int(keep[row].sum()) == int(plain_keep[row].sum())
        # Block 1 (sparsity 0.5) keeps few enough tokens that the plain static order drops the prefix.
        assert not bool(without.keep[1][row, sink[1:]].all())


def test_sink_fraction_must_leave_tokens_to_route() -> None:
    with pytest.raises(ConfigError, match="attention-sink fraction"):
        RouterSpec(kind="static", sink_fraction=1.0)


@pytest.mark.parametrize("padding", [None, "left"])
def test_monotone_routing_never_lets_a_skipped_token_reenter(padding: str | None) -> None:
    rising = (0.1, 0.3, 0.3, 0.5)
    ids, mask = random_batch(2, 30, padding)
    # The learned router with attention factors re-admits tokens under top-k routing ...
    found, base = {}, tiny_model("llama")
    for mode in ("topk", "monotone"):
        torch.manual_seed(3)  # a random router whose attention factors matter (23 re-entries in topk mode)
        model = RoutedModel(base, Schedule.from_sparsities(rising), RouterSpec(kind="learned"), mode)
        with torch.no_grad():
            found[mode] = model(ids, mask)
            masked = model(ids, mask, mode="masked")
        valid = mask.bool()  # what padding's own slots compute is never read
        assert torch.allclose(found[mode].logits[valid], masked.logits[valid], atol=1e-4)
    assert reentries(found["topk"].keep, mask.bool())[0] > 0
    # ... and under monotone routing it keeps the same counts without any re-entry.
    assert reentries(found["monotone"].keep, mask.bool())[0] == 0
    for topk_keep, monotone_keep in zip(found["topk"].keep, found["monotone"].keep, strict=True):
        assert torch.equal((topk_keep & mask.bool()).sum(1), (monotone_keep & mask.bool()).sum(1))
    # The first block has no earlier skips: both modes choose alike there.
    assert torch.equal(found["topk"].keep[0], found["monotone"].keep[0])


@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_valid_first_moves_valid_slots_first_in_order_and_back(padding: str | None) -> None:
    _, mask = random_batch(3, 11, padding)
    valid = mask.bool()
    valid[2] = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1], dtype=torch.bool)  # holes, as threshold routing leaves
    order, place = valid_first(valid)
    slots = torch.arange(11).expand(3, -1)
    for row in range(3):
        count = int(valid[row].sum())
        moved = slots[row][order[row]]
        assert torch.equal(moved[:count], torch.nonzero(valid[row]).flatten())  # valid ones, ascending
        assert torch.equal(moved[count:], torch.nonzero(~valid[row]).flatten())  # then the others, ascending
    assert torch.equal(torch.gather(torch.gather(slots, 1, order), 1, place), slots)


class _MaskSpy:
    """Records the attention mask every decoder layer is called with."""

    def __init__(self, model: RoutedModel) -> None:
        self.masks: list[torch.Tensor | None] = []
        for layer in model.layers:
            layer.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
        self.masks.append(kwargs.get("attention_mask"))


@pytest.mark.parametrize("padding", [None, "left", "right"])
def test_compact_mode_gives_sdpa_no_mask_and_eager_a_causal_one(padding: str | None) -> None:
    """Compact blocks build no [K, K] mask for SDPA, padded or not (valid slots first, is_causal); eager
    attention, which is causal only through its mask, gets plain causal masks; both agree with masked mode."""
    model = routed("llama", "static")
    ids, mask = random_batch(2, 23, padding)
    valid = mask.bool()
    for implementation in ("sdpa", "eager"):
        model.base.set_attn_implementation(implementation)
        spy = _MaskSpy(model)
        with torch.no_grad():
            compact = model(ids, mask, mode="compact")
        masks, spy.masks = spy.masks, []
        with torch.no_grad():
            masked = model(ids, mask, mode="masked")
        assert len(masks) == len(model.layers)
        if implementation == "sdpa":
            assert all(m is None for m in masks)
        else:
            for block, m in enumerate(masks):
                kept = model.schedule.kept(block, 23)
                assert m is not None and m.shape == (1, 1, kept, kept)
                assert torch.equal(m[0, 0] == 0, torch.ones(kept, kept, dtype=torch.bool).tril())
        assert (compact.logits - masked.logits)[valid].abs().max().item() <= 1e-4
        for layer in model.layers:
            layer._forward_pre_hooks.clear()
