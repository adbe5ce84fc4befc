"""Routed prefill with a compacted per-layer KV cache, then cached decode (FTP_SPEC section 9)."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from ftp_deploy.errors import ConfigError
from ftp_deploy.generation.cache import RoutedCache, kv_bytes
from ftp_deploy.generation.model import RoutedForCausalLM
from ftp_deploy.generation.reference import (
    Prefill,
    decode_step,
    extended_keep,
    masked_forward_with_keep,
    routed_prefill,
)
from ftp_deploy.routed_model import RoutedModel
from tests.conftest import random_batch
from tests.test_routed_model import routed

PROMPT_LEN = 23
STEPS = 9


def greedy_decode(model: RoutedModel, prefill: Prefill, steps: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Greedy tokens [B, steps + 1] (the first from the prefill) and the logits of each decode step."""
    tokens = [prefill.logits.argmax(-1, keepdim=True)]
    step_logits = []
    for _ in range(steps):
        step_logits.append(decode_step(model, tokens[-1], prefill.cache))
        tokens.append(step_logits[-1].argmax(-1, keepdim=True))
    return torch.cat(tokens, dim=1), step_logits


# Every routing `train` can produce (monotone is its default) and the static router.
ROUTINGS = [("static", "topk"), ("learned", "topk"), ("learned", "monotone")]


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
@pytest.mark.parametrize(("kind", "mode"), ROUTINGS)
def test_cached_decode_equals_the_masked_reference(arch: str, kind: str, mode: str, single_thread: None) -> None:
    model = routed(arch, kind, mode)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    prefill = routed_prefill(model, ids, mask)
    # The prompt really skipped valid tokens, and row 1 keeps padding slots in some block.
    assert any(bool((~keep & mask.bool()).any()) for keep in prefill.keep)
    assert any(bool((keep[1] & ~mask[1].bool()).any()) for keep in prefill.keep)
    generated, step_logits = greedy_decode(model, prefill, STEPS)

    full_mask = torch.cat([mask, torch.ones_like(generated)], dim=1)
    reference_prefill = masked_forward_with_keep(model, ids, mask, prefill.keep)[:, -1]
    worst = (reference_prefill - prefill.logits).abs().max().item()
    for step, logits in enumerate(step_logits):
        length = PROMPT_LEN + step + 1
        keep = extended_keep(prefill.keep, step + 1)
        sequence = torch.cat([ids, generated[:, : step + 1]], dim=1)
        reference = masked_forward_with_keep(model, sequence, full_mask[:, :length], keep)[:, -1]
        worst = max(worst, (reference - logits).abs().max().item())
    print(f"{arch}/{kind}/{mode}: max |cached - masked reference| over {STEPS} steps = {worst:.2e}")
    assert worst <= 1e-4


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2", "qwen3"])
def test_sparsity_zero_decode_reproduces_hf_generate(arch: str, single_thread: None) -> None:
    """With nothing skipped, our cache and positions must be transformers' own cached greedy decoding."""
    model = routed(arch, "static", schedule=(0.0,) * 4)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    with torch.no_grad():
        hf = model.base.generate(
            ids,
            attention_mask=mask,
            max_new_tokens=STEPS + 1,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
            output_logits=True,
            return_dict_in_generate=True,
        )
    prefill = routed_prefill(model, ids, mask)
    generated, step_logits = greedy_decode(model, prefill, STEPS)
    assert torch.equal(generated, hf.sequences[:, PROMPT_LEN:])
    ours = [prefill.logits, *step_logits]
    assert max((a - b).abs().max().item() for a, b in zip(hf.logits, ours, strict=True)) <= 1e-5


def test_prefill_logits_equal_the_routed_forward() -> None:
    model = routed("qwen2", "learned")
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    with torch.no_grad():
        plain = model(ids, mask, logits_to_keep=1)
    prefill = routed_prefill(model, ids, mask)
    assert torch.equal(plain.logits[:, -1], prefill.logits)
    assert all(torch.equal(a, b) for a, b in zip(plain.keep, prefill.keep, strict=True))


@pytest.mark.parametrize("kind", ["static", "learned"])
def test_each_block_caches_its_kept_count_plus_generated(kind: str) -> None:
    model = routed("llama", kind)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    prefill = routed_prefill(model, ids, mask)
    kept = [model.schedule.kept(block, PROMPT_LEN) for block in range(len(model.layers))]
    assert len(set(kept)) > 1  # a non-uniform schedule: the lengths really differ per block
    assert prefill.cache.layer_lengths() == kept
    greedy_decode(model, prefill, STEPS)
    assert prefill.cache.layer_lengths() == [k + STEPS for k in kept]
    assert [valid.shape[1] for valid in prefill.cache.slot_valid] == [k + STEPS for k in kept]
    # Row 1 is padded: its valid slots are its kept valid prompt tokens plus every generated one.
    for block, valid in enumerate(prefill.cache.slot_valid):
        assert int(valid[1].sum()) == int((prefill.keep[block][1] & mask[1].bool()).sum()) + STEPS
    assert prefill.cache.next_position.tolist() == [int(n) + STEPS for n in mask.sum(1)]


def test_routed_cache_bytes_against_the_dense_cache() -> None:
    model = routed("llama", "static", schedule=(0.3, 0.3, 0.3, 0.3))
    ids, mask = random_batch(2, 40, "left")
    prefill = routed_prefill(model, ids, mask)
    dense = DynamicCache()
    with torch.no_grad():
        model.base(ids, attention_mask=mask, cache=dense, use_cache=True)
    kept = sum(model.schedule.kept(block, 40) for block in range(len(model.layers)))
    ratio = kv_bytes(prefill.cache) / kv_bytes(dense)
    print(f"routed/dense KV bytes at uniform sparsity 0.3, T=40: {ratio:.4f}")
    assert ratio == kept / (len(model.layers) * 40)
    assert abs(ratio - 0.7) <= 0.03


def test_bad_prompts_are_config_errors() -> None:
    ids, mask = random_batch(2, PROMPT_LEN, "right")
    with pytest.raises(ConfigError, match="left padding"):
        routed_prefill(routed("llama", "static"), ids, mask)
    with pytest.raises(ConfigError, match="top-k"):
        routed_prefill(routed("llama", "learned", "threshold"), ids)
    prefill = routed_prefill(routed("llama", "static"), ids[:, :5])
    with pytest.raises(ConfigError, match="one token per row"):
        decode_step(routed("llama", "static"), ids[:, :2], prefill.cache)


def hf_generate(model: RoutedModel, ids: torch.Tensor, mask: torch.Tensor, **options: object) -> torch.Tensor:
    wrapper = RoutedForCausalLM(model).eval()
    with torch.no_grad():
        return wrapper.generate(
            ids, attention_mask=mask, cache=RoutedCache(), do_sample=False, pad_token_id=0, **options
        )


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
@pytest.mark.parametrize("kind", ["static", "learned"])
def test_transformers_generate_runs_the_cached_decode(arch: str, kind: str, single_thread: None) -> None:
    model = routed(arch, kind)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    ours, _ = greedy_decode(model, routed_prefill(model, ids, mask), STEPS)
    theirs = hf_generate(model, ids, mask, max_new_tokens=STEPS + 1, eos_token_id=None)
    assert torch.equal(theirs[:, PROMPT_LEN:], ours)
    # EOS ends a row as a transformers user expects: the rest of that row is padding.
    eos = int(ours[0, 3])
    stopped = hf_generate(model, ids, mask, max_new_tokens=STEPS + 1, eos_token_id=eos)[0, PROMPT_LEN:]
    first = int((ours[0] == eos).nonzero()[0])
    assert torch.equal(stopped[: first + 1], ours[0, : first + 1])
    assert bool((stopped[first + 1 :] == 0).all())


def test_transformers_generate_without_a_routed_cache_is_a_config_error() -> None:
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    wrapper = RoutedForCausalLM(routed("llama", "static")).eval()
    with pytest.raises(ConfigError, match="RoutedCache"), torch.no_grad():
        wrapper.generate(ids, attention_mask=mask, max_new_tokens=2, do_sample=False, pad_token_id=0)
