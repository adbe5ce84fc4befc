"""Task metrics from log-likelihoods: acc / acc_norm, LAMBADA accuracy and perplexity, chance level."""

from __future__ import annotations

import math
from collections import Counter

from ftp_deploy.evaluation.loaders import ChoiceItem
from ftp_deploy.evaluation.scoring import LogLikelihood
from ftp_deploy.formats.eval_results import TaskScores


def _argmax(values: list[float]) -> int:
    """First index of the largest value, as numpy's argmax (lm-evaluation-harness breaks ties so)."""
    return max(range(len(values)), key=lambda i: (values[i], -i))


def _stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / (n - 1)) if n > 1 else 0.0


def choice_metrics(items: list[ChoiceItem], scores: list[LogLikelihood]) -> TaskScores:
    """`scores` holds every item's choices in order. acc takes the largest summed log-likelihood,
    acc_norm the largest per UTF-8 byte of the choice."""
    predictions, normalized = [], []
    at = 0
    for item in items:
        logprobs = [s.logprob for s in scores[at : at + len(item.choices)]]
        at += len(item.choices)
        predictions.append(_argmax(logprobs))
        normalized.append(_argmax([lp / len(c.encode("utf-8")) for lp, c in zip(logprobs, item.choices, strict=True)]))
    n = len(items)
    correct = [int(p == item.label) for p, item in zip(predictions, items, strict=True)]
    acc = sum(correct) / n
    acc_norm = sum(p == item.label for p, item in zip(normalized, items, strict=True)) / n
    return TaskScores(
        acc=acc,
        acc_stderr=_stderr(acc, n),
        acc_norm=acc_norm,
        acc_norm_stderr=_stderr(acc_norm, n),
        items=n,
        correct=correct,
        predictions=predictions,
        predictions_norm=normalized,
    )


def target_metrics(scores: list[LogLikelihood]) -> TaskScores:
    """LAMBADA: accuracy = the target is the greedy continuation; perplexity = exp(-mean log-likelihood)."""
    n = len(scores)
    correct = [int(s.greedy) for s in scores]
    acc = sum(correct) / n
    return TaskScores(
        acc=acc,
        acc_stderr=_stderr(acc, n),
        ppl=math.exp(-sum(s.logprob for s in scores) / n),
        items=n,
        correct=correct,
    )


def chance_accuracy(items: list[ChoiceItem]) -> float:
    """Accuracy of answering without reading the question.

    Where every item offers the same choices (boolq's no/yes), always giving the most frequent
    answer; otherwise a uniform guess, since a choice's position carries no meaning.
    """
    if len({item.choices for item in items}) == 1:
        return max(Counter(item.label for item in items).values()) / len(items)
    return sum(1 / len(item.choices) for item in items) / len(items)
