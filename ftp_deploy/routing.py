"""Which tokens each block keeps: forced keeps, top-k and threshold selection, masks."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ftp_deploy.plugins.token_compaction.reference import select_top_rows

# monotone: top-k, but a token that skipped a block ranks below every live token afterwards, so it
# stays out (unless a later block keeps more tokens than are live): no stale re-entry.
ROUTING_MODES = ("topk", "threshold", "monotone")
# The attention-score table's entry for a token an earlier block skipped, under monotone routing.
# Real scores are >= 0, so the table alone says which tokens are live.
SKIPPED_SCORE = -1.0
# Finite, so fp16/bf16 exports never see inf - inf; far above any router logit.
FORCED_SCORE = 1.0e6


@dataclass
class Selection:
    """Kept tokens of one block in compact form.

    indices: [B, K] ascending original positions. filled: [B, K] whether the slot holds a
    kept token (threshold routing pads rows with fewer kept tokens); None means all do.
    """

    indices: torch.Tensor
    filled: torch.Tensor | None = None

    def keep_mask(self, seq_len: int) -> torch.Tensor:
        keep = torch.zeros(self.indices.shape[0], seq_len, dtype=torch.bool, device=self.indices.device)
        flags = torch.ones_like(self.indices, dtype=torch.bool) if self.filled is None else self.filled
        return keep.scatter(1, self.indices, flags)


def last_valid_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last valid token, for left or right padding."""
    seq_len = attention_mask.shape[1]
    arange = torch.arange(seq_len, device=attention_mask.device)
    return torch.where(attention_mask.bool(), arange, -1).max(dim=1).values


def first_valid_index(attention_mask: torch.Tensor) -> torch.Tensor:
    seq_len = attention_mask.shape[1]
    arange = torch.arange(seq_len, device=attention_mask.device)
    return torch.where(attention_mask.bool(), arange, seq_len).min(dim=1).values


def forced_keep_mask(attention_mask: torch.Tensor, sink_fraction: float = 0.0) -> torch.Tensor:
    """The first valid token (the attention sink) and the last valid one, kept in every block.

    `sink_fraction` > 0 also keeps the first `ceil(sink_fraction * valid tokens)` valid tokens:
    a longer attention-sink prefix, which the static order (x_0, then the most recent tokens)
    otherwise drops first.
    """
    seq_len = attention_mask.shape[1]
    arange = torch.arange(seq_len, device=attention_mask.device).unsqueeze(0)
    first = first_valid_index(attention_mask).unsqueeze(1)
    last = last_valid_index(attention_mask).unsqueeze(1)
    forced = (arange == first) | (arange == last)
    if sink_fraction > 0:
        valid = attention_mask.bool()
        sink = torch.ceil(valid.sum(1, keepdim=True).float() * sink_fraction)
        forced = forced | (valid & ((arange - first).float() < sink))
    return forced


def routing_scores(raw: torch.Tensor, attention_mask: torch.Tensor, forced: torch.Tensor) -> torch.Tensor:
    """fp32 scores with forced tokens on top and padding at the bottom, so padding goes first."""
    scores = raw.float().clamp(-FORCED_SCORE / 2, FORCED_SCORE / 2)
    scores = torch.where(forced, torch.full_like(scores, FORCED_SCORE), scores)
    return torch.where(attention_mask.bool(), scores, torch.full_like(scores, -FORCED_SCORE))


def demote_skipped(scores: torch.Tensor, live: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Scores (from `routing_scores`) with valid tokens not `live` below every live token, above padding.

    Live scores are at least -FORCED_SCORE / 2 and padding's is -FORCED_SCORE; the demoted ones
    land in between (-0.8125 to -0.6875 x FORCED_SCORE), still in their own order.
    """
    demoted = scores.clamp(-FORCED_SCORE / 2, FORCED_SCORE / 2) / 8 - 0.75 * FORCED_SCORE
    return torch.where(live | ~valid, scores, demoted)


def select_topk(scores: torch.Tensor, kept: int) -> Selection:
    return Selection(select_top_rows(scores, kept))


def select_threshold(logits: torch.Tensor, attention_mask: torch.Tensor, forced: torch.Tensor) -> Selection:
    """Keep tokens whose gate probability exceeds 0.5; K is the largest kept count in the batch."""
    keep = ((logits > 0) | forced) & attention_mask.bool()
    kept = int(keep.sum(1).max().item())
    indices = select_top_rows(keep.float(), kept)
    return Selection(indices, keep.gather(1, indices))


def reentries(keep: list[torch.Tensor], valid: torch.Tensor) -> tuple[int, int]:
    """(computed pairs whose token skipped an earlier block, all computed pairs) over valid tokens.

    A re-entering token brings a hidden state that missed the updates of the blocks it
    skipped; the static router with a non-decreasing schedule never lets a token re-enter.
    """
    skipped_before = torch.zeros_like(valid)
    reentered = computed = 0
    for block_keep in keep:
        kept = block_keep & valid
        reentered += int((kept & skipped_before).sum())
        computed += int(kept.sum())
        skipped_before |= valid & ~block_keep
    return reentered, computed


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, 1, Q, K] additive attention mask with a finite minimum (no NaN on any row)."""
    zero = torch.zeros((), dtype=dtype, device=allowed.device)
    low = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allowed.device)
    return torch.where(allowed, zero, low).unsqueeze(1)


def valid_first(key_valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(order, place) [B, K] of each row's slots with its valid ones first, both groups in slot order.

    Gathering slots by `order` moves them there; gathering the result by `place` moves them back
    (`place` is the inverse permutation). Compaction keeps slots in ascending original position, so
    after this every valid slot sees exactly the valid slots before it under plain causal
    attention: no [K, K] mask for padding, left or right, and the valid entries are packed first.
    """
    valid = key_valid.long()
    count = valid.sum(1, keepdim=True)
    place = torch.where(key_valid, valid.cumsum(1) - 1, count + (1 - valid).cumsum(1) - 1)
    slots = torch.arange(key_valid.shape[1], device=key_valid.device).expand_as(place)
    return torch.zeros_like(place).scatter(1, place, slots), place


def causal_additive_mask(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """[1, 1, L, L] additive mask of plain causal attention over L slots."""
    slots = torch.arange(length, device=device)
    return additive_mask((slots.unsqueeze(0) <= slots.unsqueeze(1)).unsqueeze(0), dtype)


def compact_allowed(positions: torch.Tensor, key_valid: torch.Tensor) -> torch.Tensor:
    """Causal order of original positions over kept slots; a slot always sees itself."""
    causal = positions.unsqueeze(1) <= positions.unsqueeze(2)
    diagonal = torch.eye(positions.shape[1], dtype=torch.bool, device=positions.device)
    return (causal & key_valid.unsqueeze(1)) | diagonal
