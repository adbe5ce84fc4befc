"""The log-likelihood engine against plain Hugging Face forwards worked out in the test."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from ftp_deploy.evaluation.adapters import DenseScoring, RoutedScoring
from ftp_deploy.evaluation.loaders import ChoiceItem
from ftp_deploy.evaluation.runner import EvalSettings, prepare, score_task
from ftp_deploy.evaluation.scoring import Forward, Request, Scorer, encode_pair
from ftp_deploy.evaluation.tasks import ChoiceTask, load_task
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import tiny_model, tiny_tokenizer

SETTINGS = EvalSettings(seq_len=24, scored_tokens=5)
# Choices of different token and byte lengths, so padding and the per-byte norm both matter.
ITEMS = [
    ChoiceItem("w1 w2 w3", (" w4", " w50 w6 w7", " w8 w9"), 1),
    ChoiceItem("w10 w11", (" w12", " w13"), 0),
    ChoiceItem("w20 w21 w22 w23", (" w24 w25", " w26", " w27 w28 w29 w30"), 2),
]


def hand_loglikelihood(model: torch.nn.Module, context: str, choice: str) -> float:
    """Sum of log p(choice token | everything before it), one unpadded sequence at a time."""
    tokenizer = tiny_tokenizer()
    context_ids = tokenizer(context).input_ids
    ids = tokenizer(context + choice).input_ids
    with torch.no_grad():
        logprobs = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
    return sum(float(logprobs[i - 1, ids[i]]) for i in range(len(context_ids), len(ids)))


@pytest.fixture
def mc_task(tmp_path: Path) -> ChoiceTask:
    path = tmp_path / "three.jsonl"
    records = [{"context": i.context, "choices": list(i.choices), "label": i.label} for i in ITEMS]
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    task = load_task(f"mc:{path}", None, None)
    assert isinstance(task, ChoiceTask)
    return task


def test_acc_and_acc_norm_match_hand_computation(mc_task: ChoiceTask) -> None:
    model = tiny_model()
    expected_acc = expected_norm = 0
    expected_scores = []
    for item in ITEMS:
        scores = [hand_loglikelihood(model, item.context, c) for c in item.choices]
        per_byte = [s / len(c.encode()) for s, c in zip(scores, item.choices, strict=True)]
        expected_acc += scores.index(max(scores)) == item.label
        expected_norm += per_byte.index(max(per_byte)) == item.label
        expected_scores += scores
    prepared = prepare(mc_task, tiny_tokenizer(), SETTINGS, max_length=512)
    scorer = Scorer(DenseScoring(model))
    got = [s.logprob for s in scorer.loglikelihoods(prepared.requests)]
    assert got == pytest.approx(expected_scores, abs=1e-5)
    metrics = score_task(Scorer(DenseScoring(model)), prepared, SETTINGS)
    assert expected_acc != expected_norm  # so the per-byte norm is really exercised
    assert metrics.acc == expected_acc / 3
    assert metrics.acc_norm == expected_norm / 3
    assert metrics.items == 3


def test_encode_pair_follows_lm_evaluation_harness() -> None:
    tokenizer = tiny_tokenizer()
    # A trailing context space moves to the continuation.
    assert encode_pair(tokenizer, "w1 w2 ", "w3 w4", 512) == encode_pair(tokenizer, "w1 w2", " w3 w4", 512)
    assert encode_pair(tokenizer, "w1 w2", " w3 w4", 512) == Request((5, 6, 7), (7, 8))
    # An empty context is the BOS token; a long one is cut from the left.
    assert encode_pair(tokenizer, "", "w3", 512) == Request((tokenizer.bos_token_id,), (7,))
    assert encode_pair(tokenizer, "w1 w2 w3 w4", " w5 w6", 3) == Request((7, 8, 9), (9, 10))


def test_routed_rows_keep_their_own_routing_in_a_batch() -> None:
    routed = RoutedModel(tiny_model(), Schedule.uniform(0.4, 4), RouterSpec(kind="static"))
    generator = torch.Generator().manual_seed(0)
    lengths = [9, 12, 12, 15, 9, 20, 12]
    requests = [Request(tuple(torch.randint(4, 90, (n,), generator=generator).tolist()), (5, 6, 7)) for n in lengths]
    alone = [Scorer(RoutedScoring(routed), batch_tokens=1).loglikelihoods([r])[0].logprob for r in requests]
    batched = [s.logprob for s in Scorer(RoutedScoring(routed), batch_tokens=200).loglikelihoods(requests)]
    assert batched == pytest.approx(alone, abs=1e-5)
    # Padded together, a short row would keep more of its tokens (top-k counts the padded length).
    padded = RoutedScoring(routed)
    padded.exact_lengths = False
    mixed = [s.logprob for s in Scorer(padded, batch_tokens=200).loglikelihoods(requests)]
    assert max(abs(a - b) for a, b in zip(mixed, alone, strict=True)) > 1e-3


def test_window_perplexity_on_scored_and_all_positions(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "text.txt"
    path.write_text(" ".join(f"w{i * 7 % 90}" for i in range(53)))
    task = load_task(f"ppl:{path}", None, None)
    prepared = prepare(task, tiny_tokenizer(), SETTINGS, max_length=512)
    assert [len(w) for w in prepared.windows] == [24, 24]  # 53 tokens: two full windows, the rest dropped
    scored, every = [], []
    for window in prepared.windows:
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([window])).logits[0], dim=-1)
        losses = [-float(logprobs[i - 1, window[i]]) for i in range(1, len(window))]
        scored += losses[-SETTINGS.scored_tokens :]
        every += losses
    metrics = score_task(Scorer(DenseScoring(model)), prepared, SETTINGS)
    assert metrics.ppl_scored == pytest.approx(math.exp(sum(scored) / len(scored)), rel=1e-5)
    assert metrics.ppl_all == pytest.approx(math.exp(sum(every) / len(every)), rel=1e-5)
    assert (metrics.scored_tokens, metrics.all_tokens) == (10, 46)


def test_lambada_accuracy_is_greedy_match_and_perplexity_per_item(tmp_path: Path) -> None:
    model = tiny_model()
    path = tmp_path / "lambada/lambada_test.jsonl"
    path.parent.mkdir()
    texts = ["w1 w2 w3 w4 w5", "w9 w8 w7 w6"]
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    prepared = prepare(load_task("lambada", tmp_path, None), tiny_tokenizer(), SETTINGS, max_length=512)
    scores, greedy = [], []
    tokenizer = tiny_tokenizer()
    for text in texts:
        ids = tokenizer(text).input_ids
        with torch.no_grad():
            logprobs = torch.log_softmax(model(torch.tensor([ids[:-1]])).logits[0, -1], dim=-1)
        scores.append(float(logprobs[ids[-1]]))
        greedy.append(int(logprobs.argmax()) == ids[-1])
    metrics = score_task(Scorer(DenseScoring(model)), prepared, SETTINGS)
    assert metrics.acc == sum(greedy) / 2
    assert metrics.ppl == pytest.approx(math.exp(-sum(scores) / 2), rel=1e-5)


class CountingDense(DenseScoring):
    def __init__(self) -> None:
        super().__init__(tiny_model())
        self.rows: list[int] = []

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_last: int) -> Forward:
        self.rows.append(input_ids.shape[0])
        return super().__call__(input_ids, attention_mask, keep_last)


def test_shared_inputs_are_scored_once() -> None:
    model = CountingDense()
    item = ChoiceItem("w1 w2 w3", (" w4", " w5"), 0)  # one-token choices: the same input
    requests = [encode_pair(tiny_tokenizer(), item.context, c, 512) for c in item.choices]
    scores = Scorer(model).loglikelihoods(requests)
    assert model.rows == [1]
    assert scores[0].logprob != scores[1].logprob


def test_a_text_shorter_than_a_window_is_one_window(tmp_path: Path) -> None:
    path = tmp_path / "short.txt"
    path.write_text("w1 w2 w3 w4")
    prepared = prepare(load_task(f"ppl:{path}", None, None), tiny_tokenizer(), SETTINGS, max_length=512)
    assert prepared.windows == [[5, 6, 7, 8]]
    metrics = score_task(Scorer(DenseScoring(tiny_model())), prepared, SETTINGS)
    assert (metrics.scored_tokens, metrics.all_tokens) == (3, 3)
    assert metrics.ppl_scored == metrics.ppl_all
