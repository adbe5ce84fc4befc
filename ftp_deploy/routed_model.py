"""A frozen LLaMA-family causal LM whose decoder blocks let low-priority tokens skip them.

Two execution modes give the same numbers (FTP_SPEC section 1):
- masked: every block runs on all T tokens; skipped tokens are masked out of attention as
  keys and their update is zeroed. Differentiable through the gate (for training).
- compact: each block gathers its K kept tokens, runs the unmodified HF decoder layer on
  them with their original positions, and scatters the result back (inference, export).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields, replace
from functools import partial
from typing import Any

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from ftp_deploy.attention_factor import attention_received
from ftp_deploy.errors import ConfigError
from ftp_deploy.generation.cache import RoutedCache, cache_index
from ftp_deploy.models import check_full_attention
from ftp_deploy.placement import module_device
from ftp_deploy.placement import on_device as _to
from ftp_deploy.plugins.token_compaction.contract import kept_count
from ftp_deploy.plugins.token_compaction.reference import gather_rows, token_compact, token_scatter
from ftp_deploy.router import (
    ROUTER_KINDS,
    FactorRouter,
    RouterSpec,
    random_scores,
    router_factors,
    static_scores,
    token_positions,
)
from ftp_deploy.routing import (
    ROUTING_MODES,
    SKIPPED_SCORE,
    Selection,
    additive_mask,
    causal_additive_mask,
    compact_allowed,
    demote_skipped,
    forced_keep_mask,
    routing_scores,
    select_threshold,
    select_topk,
    valid_first,
)
from ftp_deploy.schedule import Schedule

EXECUTION_MODES = ("compact", "masked")
# transformers' attention implementations that attend causally when a layer is given no mask (SDPA
# with is_causal, the flash kernels): compact blocks pass them none, so no [K, K] mask or score
# matrix is built. Eager attention (and anything not named here) gets an explicit causal mask.
_CAUSAL_WHEN_UNMASKED = {"sdpa", "flash_attention_2", "flash_attention_3"}

CompactFn = Callable[[torch.Tensor, torch.Tensor, int], tuple[torch.Tensor, torch.Tensor]]
ScatterFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def declare_causal_when_unmasked(implementation: str) -> None:
    """Name an attention implementation registered with transformers that attends causally when a layer
    gets no mask (the exporter's does), so compact blocks pass it none."""
    _CAUSAL_WHEN_UNMASKED.add(implementation)


def run_layer_causal(
    layer: Any,
    hidden: torch.Tensor,
    cos: torch.Tensor,
    sin: torch.Tensor,
    key_valid: torch.Tensor,
    cache: RoutedCache | None = None,
    reorder: bool = True,
) -> torch.Tensor:
    """The unmodified layer over slots [B, K] whose valid entries are in ascending original position.

    With `reorder`, each row's valid slots move first (`routing.valid_first`) and the output moves
    back, so plain causal attention is exact for every valid slot whatever the padding (FTP_SPEC
    section 1: causal over original order, padding masked) and no mask or full score matrix is
    built; without it the caller guarantees every slot is valid. Slots that hold padding see
    whatever precedes them: their outputs are never read. A `cache` receives the layer's keys and
    values in the slots' new order, valid entries first, with their validity.
    """
    place = None
    if reorder:
        order, place = valid_first(key_valid)
        hidden, cos, sin = (gather_rows(t.expand(order.shape[0], -1, -1), order) for t in (hidden, cos, sin))
        key_valid = torch.gather(key_valid, 1, order)
    mask = None
    if layer.self_attn.config._attn_implementation not in _CAUSAL_WHEN_UNMASKED:
        mask = causal_additive_mask(hidden.shape[1], hidden.dtype, hidden.device)
    updated = layer(hidden, attention_mask=mask, position_embeddings=(cos, sin), cache=cache)
    if cache is not None:
        cache.add_slots(cache_index(layer), key_valid)
    return updated if place is None else gather_rows(updated, place)


@dataclass
class CompactionOps:
    """TokenCompact / TokenScatter implementations; the exporter swaps in ONNX-emitting ones."""

    compact: CompactFn = token_compact
    scatter: ScatterFn = token_scatter


@dataclass
class RoutedOutput:
    logits: torch.Tensor
    keep: list[torch.Tensor] = field(default_factory=list)
    indices: list[torch.Tensor] = field(default_factory=list)
    router_logits: list[torch.Tensor] = field(default_factory=list)
    block_outputs: list[torch.Tensor] = field(default_factory=list)


@dataclass
class BlockStep:
    """What one block hands on: the hidden states, its selection, the updated attention-score factor."""

    hidden: torch.Tensor
    selection: Selection
    attention_score: torch.Tensor
    raw: torch.Tensor | None


@dataclass
class TokenFacts:
    """Per-sequence facts every block needs, computed once per forward."""

    attention_mask: torch.Tensor
    valid: torch.Tensor
    positions: torch.Tensor
    forced: torch.Tensor
    cos: torch.Tensor
    sin: torch.Tensor
    padded: bool

    def to(self, device: torch.device) -> TokenFacts:
        moved = {f.name: _to(getattr(self, f.name), device) for f in fields(self) if f.name != "padded"}
        return replace(self, **moved)


def token_facts(
    rotary_emb: nn.Module,
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    always_mask: bool,
    sink_fraction: float = 0.0,
) -> TokenFacts:
    """Positions (among valid tokens), forced keeps and rotary tables of a batch.

    `always_mask` gives compact blocks the explicit padding-aware mask even when nothing is
    padded, so no branch depends on the mask's values (what a graph for every input needs).
    """
    positions = token_positions(attention_mask)
    cos, sin = rotary_emb(hidden, positions)
    return TokenFacts(
        attention_mask=attention_mask,
        valid=attention_mask.bool(),
        positions=positions,
        forced=forced_keep_mask(attention_mask, sink_fraction),
        cos=cos,
        sin=sin,
        padded=always_mask or not bool(attention_mask.bool().all()),
    )


class RoutedModel(nn.Module):
    """Wraps a HF causal LM (LLaMA, Mistral, Qwen2, Qwen3); only `router` has trainable weights.

    The base model may sit on any device, or on several (accelerate's device map): each block runs
    where its weights are, the router (fp32 whatever the base's dtype) on the embedding's device,
    and the outputs come back on the device of `input_ids`. `checkpoint_blocks` recomputes each
    block in the backward pass instead of keeping its activations (router training on long
    sequences); it changes memory, not values.
    """

    def __init__(
        self,
        base: Any,
        schedule: Schedule,
        router_spec: RouterSpec | None = None,
        routing_mode: str = "topk",
        router: FactorRouter | None = None,
        checkpoint_blocks: bool = False,
    ) -> None:
        super().__init__()
        spec = router_spec or RouterSpec()
        if spec.kind not in ROUTER_KINDS:
            raise ConfigError(f"unknown router kind {spec.kind!r}; choose one of {', '.join(ROUTER_KINDS)}")
        if routing_mode not in ROUTING_MODES:
            raise ConfigError(f"unknown routing mode {routing_mode!r}; choose one of {', '.join(ROUTING_MODES)}")
        if routing_mode == "threshold" and spec.kind != "learned":
            raise ConfigError("threshold routing needs the learned router (static and random scores are not gates)")
        if routing_mode == "monotone" and spec.kind != "learned":
            raise ConfigError(
                "monotone routing needs the learned router: it reads which tokens are live from the "
                "attention-score table only that router keeps (the static order never re-admits a token)"
            )
        check_full_attention(base.config)
        schedule.check_layers(len(base.model.layers))
        self.base: Any = base
        self.schedule = schedule
        self.router_spec = spec
        self.routing_mode = routing_mode
        self.router = (router or FactorRouter(spec.hidden)) if spec.kind == "learned" else None
        if self.router is not None:
            self.router.to(module_device(base.model.embed_tokens))
        self.ops = CompactionOps()
        self.checkpoint_blocks = checkpoint_blocks

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.model.layers

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mode: str = "compact",
        logits_to_keep: int = 0,
        gate_gradient: bool = False,
        return_block_outputs: bool = False,
        always_mask: bool = False,
        cache: RoutedCache | None = None,
    ) -> RoutedOutput:
        """Routed forward. `logits_to_keep=1` computes logits for the last position only (prefill).

        `gate_gradient` (masked mode) scales each token's block update by a straight-through
        gate, 1 or 0 in value, whose gradient reaches the router. `always_mask` gives compact
        blocks the explicit padding-aware mask even when nothing is padded, so no branch depends
        on the mask's values (what a traced graph for every input needs). A `cache` (compact
        mode) receives each block's keys and values of its kept tokens (FTP_SPEC section 9).
        """
        if mode not in EXECUTION_MODES:
            raise ConfigError(f"unknown execution mode {mode!r}; choose one of {', '.join(EXECUTION_MODES)}")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        backbone = self.base.model
        source = input_ids.device
        first = module_device(backbone.embed_tokens)
        hidden = backbone.embed_tokens(_to(input_ids, first))
        tokens = self.token_facts(hidden, _to(attention_mask, first), always_mask)
        attention_score = torch.ones_like(tokens.positions, dtype=torch.float32)
        out = RoutedOutput(logits=hidden)
        run_block = self.run_block
        if self.checkpoint_blocks and torch.is_grad_enabled():
            run_block = partial(checkpoint, self.run_block, use_reentrant=False)
        for block, layer in enumerate(self.layers):
            device = module_device(layer)
            if hidden.device != device:  # the next GPU of a device map
                hidden, attention_score, tokens = hidden.to(device), attention_score.to(device), tokens.to(device)
            step = run_block(
                layer,
                block,
                self.schedule.thousandths[block],
                self.schedule.sparsities[block],
                hidden,
                attention_score,
                tokens,
                mode=mode,
                gate_gradient=gate_gradient,
                cache=cache,
            )
            hidden, attention_score = step.hidden, step.attention_score
            if step.raw is not None and self.router is not None:
                out.router_logits.append(_to(step.raw, source))
            out.keep.append(_to(step.selection.keep_mask(hidden.shape[1]), source))
            out.indices.append(_to(step.selection.indices, source))
            if return_block_outputs:
                out.block_outputs.append(_to(hidden, source))
        hidden = backbone.norm(_to(hidden, module_device(backbone.norm)))
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        out.logits = _to(self.base.lm_head(_to(hidden, module_device(self.base.lm_head))), source)
        return out

    def run_block(
        self,
        layer: Any,
        block: int,
        sparsity_num: int,
        sparsity: float | torch.Tensor,
        hidden: torch.Tensor,
        attention_score: torch.Tensor,
        tokens: TokenFacts,
        mode: str = "compact",
        gate_gradient: bool = False,
        cache: RoutedCache | None = None,
    ) -> BlockStep:
        """One routed decoder block: scores, selection, the block on its kept tokens, the factor update.

        `sparsity_num` (thousandths) sets the kept count and `sparsity` is the router's
        required-sparsity factor; the exporter traces one block with them as parameters and
        instantiates the graph for every layer. `block` seeds the random router only. Under
        monotone routing the attention-score table also says which tokens every earlier block
        kept (`routing.SKIPPED_SCORE` marks the others), so a block's inputs and outputs are the
        same in every routing mode and the exported per-block graph carries it as it is.
        """
        raw = self._raw_scores(block, tokens, attention_score, sparsity)
        scores = routing_scores(
            raw if raw is not None else static_scores(tokens.positions), tokens.attention_mask, tokens.forced
        )
        if self.routing_mode == "monotone":
            scores = demote_skipped(scores, attention_score >= 0, tokens.valid)
        if mode == "compact":
            hidden, selection, compact_in = self._compact_block(layer, sparsity_num, hidden, scores, raw, tokens, cache)
        elif cache is not None:
            raise ConfigError("a KV cache is filled in compact mode only")
        else:
            hidden, selection, compact_in = self._masked_block(
                layer, sparsity_num, hidden, scores, raw, tokens, gate_gradient
            )
        if self.router is not None:
            attention_score = self._update_attention_score(layer, attention_score, compact_in, selection, tokens)
        return BlockStep(hidden, selection, attention_score, raw)

    def token_facts(self, hidden: torch.Tensor, attention_mask: torch.Tensor, always_mask: bool) -> TokenFacts:
        return token_facts(
            self.base.model.rotary_emb, hidden, attention_mask, always_mask, self.router_spec.sink_fraction
        )

    def _raw_scores(
        self, block: int, tokens: TokenFacts, attention_score: torch.Tensor, sparsity: float | torch.Tensor
    ) -> torch.Tensor | None:
        """Router logits (learned), random scores, or None for the static priority."""
        if self.router is not None:
            factors = router_factors(tokens.positions, tokens.valid, attention_score, sparsity)
            return _to(self.router(_to(factors, module_device(self.router))), factors.device)
        if self.router_spec.kind == "random":
            return random_scores(tokens.positions.shape, self.router_spec.seed, block, tokens.positions.device)
        return None

    def _compact_block(
        self,
        layer: Any,
        sparsity_num: int,
        hidden: torch.Tensor,
        scores: torch.Tensor,
        raw: torch.Tensor | None,
        tokens: TokenFacts,
        cache: RoutedCache | None = None,
    ) -> tuple[torch.Tensor, Selection, torch.Tensor]:
        if self.routing_mode == "threshold" and raw is not None:
            selection = select_threshold(raw, tokens.valid.long(), tokens.forced)
            compact = gather_rows(hidden, selection.indices)
        else:
            compact, indices = self.ops.compact(hidden, scores, sparsity_num)
            selection = Selection(indices)
        index = selection.indices
        cos, sin = (gather_rows(t.expand(index.shape[0], -1, -1), index) for t in (tokens.cos, tokens.sin))
        key_valid = self._slot_valid(selection, tokens)
        reorder = tokens.padded or selection.filled is not None
        updated = run_layer_causal(layer, compact, cos, sin, key_valid, cache, reorder)
        if selection.filled is not None:  # unfilled slots of threshold routing keep their input
            updated = torch.where(selection.filled.unsqueeze(-1), updated, compact)
        return self.ops.scatter(hidden, updated, index), selection, compact

    def _masked_block(
        self,
        layer: Any,
        sparsity_num: int,
        hidden: torch.Tensor,
        scores: torch.Tensor,
        raw: torch.Tensor | None,
        tokens: TokenFacts,
        gate_gradient: bool,
    ) -> tuple[torch.Tensor, Selection, torch.Tensor]:
        if self.routing_mode == "threshold" and raw is not None:
            selection = select_threshold(raw, tokens.valid.long(), tokens.forced)
        else:
            selection = select_topk(scores, kept_count(scores.shape[1], sparsity_num))
        keep = selection.keep_mask(hidden.shape[1])
        compact_in = gather_rows(hidden.detach(), selection.indices)
        gate = keep.to(hidden.dtype)
        if gate_gradient and raw is not None:
            probability = torch.sigmoid(raw).to(hidden.dtype)
            gate = gate + probability - probability.detach()
        return self.masked_update(layer, hidden, keep, gate, tokens), selection, compact_in

    @staticmethod
    def masked_update(
        layer: Any, hidden: torch.Tensor, keep: torch.Tensor, gate: torch.Tensor, tokens: TokenFacts
    ) -> torch.Tensor:
        """One block over all T tokens with the skipped ones masked out as keys and their update gated off.

        Public so that a reference can replay given keep decisions (FTP_SPEC section 9).
        """
        key_valid = keep & tokens.valid
        allowed = compact_allowed(tokens.positions, key_valid)
        mask = additive_mask(allowed, hidden.dtype)
        updated = layer(hidden, attention_mask=mask, position_embeddings=(tokens.cos, tokens.sin))
        return hidden + gate.unsqueeze(-1) * (updated - hidden)

    @staticmethod
    def _slot_valid(selection: Selection, tokens: TokenFacts) -> torch.Tensor:
        valid = torch.gather(tokens.valid, 1, selection.indices)
        return valid if selection.filled is None else valid & selection.filled

    def _update_attention_score(
        self,
        layer: Any,
        attention_score: torch.Tensor,
        compact_in: torch.Tensor,
        selection: Selection,
        tokens: TokenFacts,
    ) -> torch.Tensor:
        index = selection.indices
        cos, sin = (gather_rows(t.expand(index.shape[0], -1, -1), index) for t in (tokens.cos, tokens.sin))
        score, seen = attention_received(
            layer,
            compact_in,
            cos,
            sin,
            torch.gather(tokens.positions, 1, index),
            self._slot_valid(selection, tokens),
            self.router_spec.attention_window,
        )
        current = torch.gather(attention_score, 1, index)
        updated = attention_score.scatter(1, index, torch.where(seen, score, current))
        if self.routing_mode == "monotone":
            kept = selection.keep_mask(attention_score.shape[1])
            updated = torch.where(kept | ~tokens.valid, updated, torch.full_like(updated, SKIPPED_SCORE))
        return updated
