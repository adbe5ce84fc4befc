"""The three small modules an export traces once each: prologue, one decoder block, epilogue.

Tracing the whole model makes torch.export carry ever deeper shape expressions through 30
blocks (minutes of sympy work); one block traced once and instantiated per layer
(`exporters/stitch.py`) costs the same for any depth. Each piece runs the routed model's own
code (`RoutedModel.run_block`, `token_facts`), so the stitched graph computes exactly what the
eager model does, and export validation compares the two.

A block's per-layer parameters are its weights (initializers, swapped per layer), its
required-sparsity factor (a graph input here, a constant per layer) and its kept-count
numerator (TokenCompact's attribute and the shape arithmetic that derives K from T; traced
with a sentinel value that the stitcher replaces).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import nn

from ftp_deploy.exporters.attention import InPlaceSlots, RotaryTables
from ftp_deploy.generation.cache import RoutedCache, cache_index
from ftp_deploy.routed_model import RoutedModel, TokenFacts, run_layer_causal, token_facts

# The kept-count numerator a block is traced with: K = 16 - 16*619//1000 = 7 at the example
# length, so K is neither 0, 1 nor T (torch.export would specialize it), and the number appears
# in no model dimension, so the stitcher can find every place it went.
SENTINEL_SPARSITY_NUM = 619
T = TypeVar("T")

PROLOGUE_OUTPUTS = ("hidden", "positions", "forced", "cos", "sin")
BLOCK_HIDDEN, BLOCK_SCORE, BLOCK_SPARSITY, BLOCK_INDICES = "hidden", "attention_score", "required_sparsity", "indices"
# A block output that the next block reads as its input `name` is called `name` + NEXT: a graph's
# input and output cannot share a name.
NEXT = "_next"
# A with-past block's cache tensors: past (decode inputs) and present (outputs), key/value/valid.
PAST = ("past_key", "past_value", "past_valid")
PRESENT = ("present_key", "present_value", "present_valid")
# An in-place decode block's: capacity-sized buffers and each row's cached count in, the same buffers out.
INPLACE_PAST = ("past_key", "past_value", "past_length")
INPLACE_PRESENT = ("present_key", "present_value")
# The rotary tables [max_positions, head_dim / 2] an in-place decode block reads (one pair for every layer).
ROTARY_TABLES = ("cos_cache", "sin_cache")
DECODE_PROLOGUE_OUTPUTS = ("hidden", "cos", "sin")


def layer_cache(cache: RoutedCache, layer_idx: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's keys, values [B, kv_heads, slots, head_dim] and slot validity [B, slots]."""
    entry: Any = cache.layers[layer_idx]
    return entry.keys, entry.values, cache.slot_valid[layer_idx]


@dataclass(frozen=True)
class BlockIO:
    """The names a block graph's inputs and outputs have (what the stitcher wires per layer)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @staticmethod
    def carried(outputs: dict[str, T]) -> dict[str, T]:
        """The outputs the next block reads, under the names of its inputs."""
        return {name.removesuffix(NEXT): value for name, value in outputs.items() if name.endswith(NEXT)}


class Prologue(nn.Module):
    """(input_ids, attention_mask) -> embeddings and the per-token facts every block reads."""

    def __init__(self, routed: RoutedModel, dense: bool, learned: bool) -> None:
        super().__init__()
        self.embed_tokens = routed.base.model.embed_tokens
        self.rotary_emb = routed.base.model.rotary_emb
        self.dense = dense
        self.learned = learned
        self.sink_fraction = routed.router_spec.sink_fraction

    @property
    def output_names(self) -> tuple[str, ...]:
        if self.dense:
            return PROLOGUE_OUTPUTS
        return (*PROLOGUE_OUTPUTS, BLOCK_SCORE) if self.learned else PROLOGUE_OUTPUTS

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.embed_tokens(input_ids)
        facts = token_facts(self.rotary_emb, hidden, attention_mask, always_mask=True, sink_fraction=self.sink_fraction)
        outputs = (hidden, facts.positions, facts.forced, facts.cos, facts.sin)
        if self.learned and not self.dense:  # uniform before the first block (FTP_SPEC section 3)
            return (*outputs, torch.ones_like(facts.positions, dtype=torch.float32))
        return outputs


class RoutedBlock(nn.Module):
    """One routed decoder block in compact mode, the layer's weights and the router its parameters."""

    def __init__(self, routed: RoutedModel, layer: nn.Module, with_past: bool = False) -> None:
        super().__init__()
        self.layer = layer
        # The router is registered so its weights become initializers shared by every layer.
        self.router = routed.router
        self._routed = [routed]  # a list: not a submodule, so the other layers' weights stay out
        self.with_past = with_past

    @property
    def learned(self) -> bool:
        return self.router is not None

    @property
    def io(self) -> BlockIO:
        inputs = (BLOCK_HIDDEN, "attention_mask", *PROLOGUE_OUTPUTS[1:])
        present = PRESENT if self.with_past else ()
        if self.learned:
            outputs = (BLOCK_HIDDEN + NEXT, BLOCK_INDICES, BLOCK_SCORE + NEXT, *present)
            return BlockIO((*inputs, BLOCK_SCORE, BLOCK_SPARSITY), outputs)
        return BlockIO(inputs, (BLOCK_HIDDEN + NEXT, BLOCK_INDICES, *present))

    def forward(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        positions: torch.Tensor,
        forced: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        attention_score: torch.Tensor | None = None,
        required_sparsity: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, ...]:
        tokens = TokenFacts(attention_mask, attention_mask.bool(), positions, forced, cos, sin, padded=True)
        if attention_score is None or required_sparsity is None:  # the static router reads neither
            attention_score, required_sparsity = torch.ones_like(positions, dtype=torch.float32), torch.zeros(())
        # The block's own cache (FTP_SPEC section 9): the keys and values of its kept tokens.
        cache = RoutedCache() if self.with_past else None
        step = self._routed[0].run_block(
            self.layer, 0, SENTINEL_SPARSITY_NUM, required_sparsity, hidden, attention_score, tokens, cache=cache
        )
        present = layer_cache(cache, cache_index(self.layer)) if cache is not None else ()
        if self.learned:
            return step.hidden, step.selection.indices, step.attention_score, *present
        return step.hidden, step.selection.indices, *present


class DenseBlock(nn.Module):
    """One unrouted decoder block on all tokens, causal over them as a routed block is over its kept ones
    (`run_layer_causal`: valid tokens first, no [T, T] mask); with past, its cache of every token."""

    def __init__(self, layer: nn.Module, with_past: bool = False) -> None:
        super().__init__()
        self.layer = layer
        self.with_past = with_past

    @property
    def io(self) -> BlockIO:
        inputs = (BLOCK_HIDDEN, "attention_mask", "cos", "sin")
        return BlockIO(inputs, (BLOCK_HIDDEN + NEXT, *(PRESENT if self.with_past else ())))

    def forward(
        self, hidden: torch.Tensor, attention_mask: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor | tuple[torch.Tensor, ...]:
        cache = RoutedCache() if self.with_past else None
        hidden = run_layer_causal(self.layer, hidden, cos, sin, attention_mask.bool(), cache)
        if cache is None:
            return hidden
        return hidden, *layer_cache(cache, cache_index(self.layer))


class DecodePrologue(nn.Module):
    """(input_ids [B, 1], position_ids [B, 1]) -> the new token's embedding and, unless the blocks rotate with
    tables of their own (`rotary` False: InPlaceDecodeBlock), its rotary cos and sin (decode_step's)."""

    def __init__(self, routed: RoutedModel, rotary: bool = True) -> None:
        super().__init__()
        self.embed_tokens = routed.base.model.embed_tokens
        self.rotary_emb = routed.base.model.rotary_emb if rotary else None

    @property
    def output_names(self) -> tuple[str, ...]:
        return DECODE_PROLOGUE_OUTPUTS if self.rotary_emb is not None else DECODE_PROLOGUE_OUTPUTS[:1]

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = self.embed_tokens(input_ids)
        if self.rotary_emb is None:
            return (hidden,)
        cos, sin = self.rotary_emb(hidden, position_ids)
        return hidden, cos, sin


class DecodeBlock(nn.Module):
    """One block for one new token per row: it attends to the block's valid cached slots and itself,
    and its key and value join the cache (generation.reference.decode_step, one layer). No routing happens
    in decode, so the routed and the dense model share this piece; only their cache lengths differ."""

    io = BlockIO((BLOCK_HIDDEN, "cos", "sin", *PAST), (BLOCK_HIDDEN + NEXT, *PRESENT))

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self,
        hidden: torch.Tensor,
        cos: torch.Tensor,
        sin: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        past_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        layer_idx = cache_index(self.layer)
        cache = RoutedCache()
        cache.update(past_key, past_value, layer_idx)
        cache.add_slots(layer_idx, past_valid)
        mask = cache.decode_mask(layer_idx, hidden.dtype)
        hidden = self.layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), cache=cache)
        cache.add_slots(layer_idx, torch.ones_like(past_valid[:, :1]))
        return hidden, *layer_cache(cache, layer_idx)


class InPlaceDecodeBlock(nn.Module):
    """DecodeBlock over capacity-sized buffers, attention and rotary in one GroupQueryAttention
    (exporters/attention.InPlaceSlots): the new token's key and value are written at each row's cached
    count instead of appended, so the buffers keep their shape.

    The layer's modules are called in the order a LLaMA-family decoder layer calls them (transformers'
    LlamaDecoderLayer, with Qwen3's per-head query/key norms where the layer has them); its attention
    is not, since transformers rotates the query and key before any attention function sees them.
    Export validation compares the graph with PyTorch's cached decode."""

    io = BlockIO((BLOCK_HIDDEN, "position_ids", *ROTARY_TABLES, *INPLACE_PAST), (BLOCK_HIDDEN + NEXT, *INPLACE_PRESENT))

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(
        self,
        hidden: torch.Tensor,
        position_ids: torch.Tensor,
        cos_cache: torch.Tensor,
        sin_cache: torch.Tensor,
        past_key: torch.Tensor,
        past_value: torch.Tensor,
        past_length: torch.Tensor,
    ) -> tuple[torch.Tensor, ...]:
        layer: Any = self.layer
        attention = layer.self_attn
        states = layer.input_layernorm(hidden)
        query, key, value = attention.q_proj(states), attention.k_proj(states), attention.v_proj(states)
        if getattr(attention, "q_norm", None) is not None:  # Qwen3: RMSNorm over each head, before rotary
            per_head = (*states.shape[:-1], -1, attention.head_dim)
            query = attention.q_norm(query.view(per_head)).flatten(2)
            key = attention.k_norm(key.view(per_head)).flatten(2)
        slots = InPlaceSlots(past_key, past_value, past_length)
        output, present_key, present_value = slots.attend(
            query, key, value, position_ids, RotaryTables(cos_cache, sin_cache), float(attention.scaling)
        )
        hidden = hidden + attention.o_proj(output)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
        return hidden, present_key, present_value


class Epilogue(nn.Module):
    """Final norm and LM head, on the last position only when `last_token_logits`."""

    def __init__(self, routed: RoutedModel, last_token_logits: bool) -> None:
        super().__init__()
        self.norm = routed.base.model.norm
        self.lm_head = routed.base.lm_head
        self.last_token_logits = last_token_logits

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        if self.last_token_logits:
            hidden = hidden[:, -1:]
        return self.lm_head(self.norm(hidden))
