"""Routed prefill that fills a compacted per-layer KV cache, cached decode, and its reference.

FTP_SPEC section 9: the prompt is routed once (compact mode, top-k capacity, plain or monotone);
each generated token is the last valid token, so it is kept in every block and attends to that
block's cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ftp_deploy.errors import ConfigError
from ftp_deploy.generation.cache import RoutedCache, cache_index
from ftp_deploy.routed_model import RoutedModel

# Both keep exactly K_l tokens per block (monotone only ranks them differently), so both cache alike.
CACHED_ROUTING = ("topk", "monotone")


@dataclass
class Prefill:
    """Next-token logits [B, vocab] of each row, the filled cache, and each block's keep mask [B, T]."""

    logits: torch.Tensor
    cache: RoutedCache
    keep: list[torch.Tensor]


def _check_prompt(model: RoutedModel, attention_mask: torch.Tensor) -> None:
    if model.routing_mode not in CACHED_ROUTING:
        # Threshold routing keeps a data-dependent count per row; the cache's layers need K_l slots each.
        raise ConfigError(
            f"cached generation routes the prompt with top-k capacity ({' or '.join(CACHED_ROUTING)} routing, "
            f"FTP_SPEC section 9); this model routes by {model.routing_mode}"
        )
    if not bool(attention_mask[:, -1].bool().all()):
        # New tokens are appended at the end, so each row's last valid token must be the last column.
        raise ConfigError("cached generation needs left padding: every row's last token must be valid")


@torch.no_grad()
def routed_prefill(
    model: RoutedModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    cache: RoutedCache | None = None,
) -> Prefill:
    """Route the prompt once in compact mode; each block caches the keys and values of its kept tokens.

    `cache`, if given, must be empty and is filled in place (transformers' `generate` holds it).
    """
    mask = torch.ones_like(input_ids) if attention_mask is None else attention_mask
    _check_prompt(model, mask)
    cache = RoutedCache() if cache is None else cache
    if not cache.is_empty:
        raise ConfigError("the prefill needs an empty RoutedCache")
    cache.next_position = mask.long().sum(1)
    out = model(input_ids, mask, mode="compact", logits_to_keep=1, cache=cache)
    return Prefill(out.logits[:, -1], cache, out.keep)


def _lm_logits(model: RoutedModel, hidden: torch.Tensor) -> torch.Tensor:
    return model.base.lm_head(model.base.model.norm(hidden))


@torch.no_grad()
def decode_step(model: RoutedModel, input_ids: torch.Tensor, cache: RoutedCache) -> torch.Tensor:
    """One token per row ([B, 1]) through every block; returns its next-token logits [B, vocab].

    No routing happens: the new token is kept in every block, attends to the block's valid
    cached slots and itself, and its key and value join the block's cache.
    """
    if input_ids.shape != (cache.next_position.shape[0], 1):
        raise ConfigError(f"decode takes one token per row, shape [{cache.next_position.shape[0]}, 1]")
    backbone = model.base.model
    hidden = backbone.embed_tokens(input_ids)
    cos, sin = backbone.rotary_emb(hidden, cache.next_position.unsqueeze(1))
    new_slot = torch.ones_like(input_ids, dtype=torch.bool)
    for layer in model.layers:
        layer_idx = cache_index(layer)
        # Without padding the new token attends to every slot: no mask, which lets SDPA take its
        # grouped-query kernel as the dense model's unmasked decode does.
        mask = cache.decode_mask(layer_idx, hidden.dtype) if cache.holds_padding(layer_idx) else None
        hidden = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), cache=cache)
        cache.add_slots(layer_idx, new_slot)
    cache.next_position = cache.next_position + 1
    return _lm_logits(model, hidden)[:, -1]


@dataclass
class GreedyTrace:
    """`steps` greedy tokens [B, steps] after the prompt, the logits that chose each (prefill's first), the cache."""

    tokens: torch.Tensor
    logits: list[torch.Tensor]
    cache: RoutedCache
    keep: list[torch.Tensor]


@torch.no_grad()
def greedy_trace(model: RoutedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, steps: int) -> GreedyTrace:
    """Routed prefill, then `steps - 1` cached decode steps on the greedy tokens: the reference an
    exported decode graph is compared with, step by step."""
    prefill = routed_prefill(model, input_ids, attention_mask)
    logits = [prefill.logits]
    tokens = [prefill.logits.argmax(-1, keepdim=True)]
    for _ in range(steps - 1):
        logits.append(decode_step(model, tokens[-1], prefill.cache))
        tokens.append(logits[-1].argmax(-1, keepdim=True))
    return GreedyTrace(torch.cat(tokens, dim=1), logits, prefill.cache, prefill.keep)


def extended_keep(prompt_keep: list[torch.Tensor], generated: int) -> list[torch.Tensor]:
    """The prefill's keep masks with `generated` more tokens kept in every block."""
    return [torch.cat([keep, keep.new_ones(keep.shape[0], generated)], dim=1) for keep in prompt_keep]


@torch.no_grad()
def masked_forward_with_keep(
    model: RoutedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: list[torch.Tensor]
) -> torch.Tensor:
    """Masked-mode forward with given keep decisions per block (no routing); logits [B, T, vocab].

    With `extended_keep` of a prefill's decisions, this is the parity reference of cached decode.
    """
    if len(keep) != len(model.layers):
        raise ConfigError(f"{len(keep)} keep masks for a model of {len(model.layers)} blocks")
    hidden = model.base.model.embed_tokens(input_ids)
    tokens = model.token_facts(hidden, attention_mask, always_mask=True)
    for layer, block_keep in zip(model.layers, keep, strict=True):
        hidden = model.masked_update(layer, hidden, block_keep, block_keep.to(hidden.dtype), tokens)
    return _lm_logits(model, hidden)
