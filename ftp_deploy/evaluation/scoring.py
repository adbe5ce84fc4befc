"""Log-likelihood engine in the manner of lm-evaluation-harness, for dense and routed models alike.

A request is an input and the tokens that follow it; its score is the sum of their
log-probabilities. Requests are batched with left padding, so every continuation ends the
row and only the last few positions need logits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ftp_deploy.errors import DataError
from ftp_deploy.evaluation.tally import Tally
from ftp_deploy.fidelity import scored_logits, scored_targets, token_nll
from ftp_deploy.formats.eval_results import TaskScores

DEFAULT_BATCH_TOKENS = 1024
# Padding slots are masked out, so any id will do.
PAD_ID = 0


@dataclass(frozen=True)
class Forward:
    logits: torch.Tensor  # [B, keep_last, V]
    kept: torch.Tensor  # [B, L]: valid tokens each decoder block computed


class ScoringModel(Protocol):
    """A model as the scorer sees it; `exact_lengths` batches only equal-length rows.

    Top-k routing keeps `T - (T * n) // 1000` tokens of a T-token batch, so a padded row
    would keep more of its own tokens than it does alone; equal-length batches give every
    sequence its own routing.
    """

    config: Any
    exact_lengths: bool

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_last: int) -> Forward: ...


@dataclass(frozen=True)
class Request:
    """Score `targets`, the tokens after `input_ids`; the last len(targets) inputs predict them."""

    input_ids: tuple[int, ...]
    targets: tuple[int, ...]


@dataclass(frozen=True)
class LogLikelihood:
    logprob: float
    greedy: bool  # every target token is the argmax


@dataclass
class NllSums:
    """Negative log-likelihood over the scored positions (FTP_SPEC 1b) and over all positions."""

    scored_nll: float = 0.0
    scored_count: int = 0
    all_nll: float = 0.0
    all_count: int = 0

    def add(self, logits: torch.Tensor, input_ids: torch.Tensor, scored: int) -> None:
        """Logits [B, T, V] of windows `input_ids` [B, T]; scored positions as ftp_deploy.fidelity reads them."""
        scored_nll = token_nll(scored_logits(logits, scored), scored_targets(input_ids, scored))
        every_nll = token_nll(logits[:, :-1], input_ids[:, 1:])
        self.scored_nll += float(scored_nll.sum())
        self.scored_count += scored_nll.numel()
        self.all_nll += float(every_nll.sum())
        self.all_count += every_nll.numel()

    def perplexities(self) -> TaskScores:
        return TaskScores(
            ppl_scored=math.exp(self.scored_nll / self.scored_count),
            ppl_all=math.exp(self.all_nll / self.all_count),
            scored_tokens=self.scored_count,
            all_tokens=self.all_count,
        )


def encode_text(tokenizer: Any, text: str) -> list[int]:
    # lm-evaluation-harness adds no special tokens for causal models.
    return list(tokenizer(text, add_special_tokens=False).input_ids)


def encode_pair(tokenizer: Any, context: str, continuation: str, max_length: int) -> Request:
    """lm-evaluation-harness's pairing: trailing context spaces move to the continuation, and the
    continuation is what the whole text adds to the context's tokens."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    if context:
        context_ids = encode_text(tokenizer, context)
        targets = encode_text(tokenizer, context + continuation)[len(context_ids) :]
    else:
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        context_ids, targets = [prefix], encode_text(tokenizer, continuation)
    if not targets or len(targets) > max_length:
        raise DataError(f"continuation {continuation!r} encodes to {len(targets)} tokens (1..{max_length} needed)")
    tokens = (context_ids + targets)[-(max_length + 1) :]
    return Request(tuple(tokens[:-1]), tuple(targets))


def token_windows(token_ids: list[int], seq_len: int) -> list[list[int]]:
    """Consecutive `seq_len`-token windows; a text shorter than one window is one window."""
    windows = [token_ids[i : i + seq_len] for i in range(0, len(token_ids) - seq_len + 1, seq_len)]
    if windows:
        return windows
    if len(token_ids) < 2:
        raise DataError(f"the text is {len(token_ids)} token(s) long; perplexity needs at least 2")
    return [token_ids]


def _batches(lengths: list[int], budget: int, exact: bool) -> Iterator[list[int]]:
    """Runs of consecutive indices of the (descending) lengths whose padded size fits `budget` tokens."""
    batch: list[int] = []
    for index, length in enumerate(lengths):
        if batch and ((len(batch) + 1) * lengths[batch[0]] > budget or (exact and length != lengths[batch[0]])):
            yield batch
            batch = []
        batch.append(index)
    if batch:
        yield batch


def _no_progress(_: int) -> None:
    return None


@dataclass
class Scorer:
    """Runs one model over requests or windows, counting its compute; `advance` reports progress."""

    model: ScoringModel
    tally: Tally = field(default_factory=Tally)
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    advance: Callable[[int], None] = _no_progress

    def _forward(self, rows: list[tuple[int, ...]], keep_last: int) -> Forward:
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for b, row in enumerate(rows):
            ids[b, width - len(row) :] = torch.tensor(row)
            mask[b, width - len(row) :] = 1
        with torch.inference_mode():
            out = self.model(ids, mask, keep_last)
        self.tally.add(self.model.config, out.kept, mask.sum(1))
        return out

    def loglikelihoods(self, requests: list[Request]) -> list[LogLikelihood]:
        """One score per request; requests with the same input share one forward (boolq's yes/no)."""
        sharing: dict[tuple[int, ...], list[int]] = {}
        for index, request in enumerate(requests):
            sharing.setdefault(request.input_ids, []).append(index)
        inputs = sorted(sharing, key=len, reverse=True)
        results: dict[int, LogLikelihood] = {}
        for batch in _batches([len(i) for i in inputs], self.batch_tokens, self.model.exact_lengths):
            keep = max(len(requests[r].targets) for b in batch for r in sharing[inputs[b]])
            logprobs = torch.log_softmax(self._forward([inputs[b] for b in batch], keep).logits.float(), dim=-1)
            for row, b in enumerate(batch):
                for r in sharing[inputs[b]]:
                    targets = torch.tensor(requests[r].targets)
                    scores = logprobs[row, keep - len(targets) :]
                    logprob = float(scores.gather(1, targets.unsqueeze(1)).sum())
                    results[r] = LogLikelihood(logprob, bool((scores.argmax(-1) == targets).all()))
                self.advance(len(sharing[inputs[b]]))
        return [results[r] for r in range(len(requests))]

    def window_nll(self, windows: list[list[int]], scored: int) -> NllSums:
        """Next-token losses of each window; the last `scored` predictions are the scored positions."""
        sums = NllSums()
        rows = sorted((tuple(w) for w in windows), key=len, reverse=True)
        for batch in _batches([len(r) for r in rows], self.batch_tokens, exact=True):
            ids = torch.tensor([rows[b] for b in batch])
            sums.add(self._forward([rows[b] for b in batch], ids.shape[1]).logits, ids, min(scored, ids.shape[1] - 1))
            self.advance(len(batch))
        return sums
