"""The server model's batch loop and request checks in-process (no Triton): `serving/batched_generation.py`,
`serving/triton_model.py`.

Guards: rows of different lengths, budgets and end-of-sequence tokens batched together give exactly
what each gives alone through `OnnxGenerator.generate` (greedy and seeded sampling); every bad request
is a RequestError with one clear message. The real server: tests/test_serve.py.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.engines.onnx_generation import OnnxCache, OnnxGenerator
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.formats.export_manifest import WithPastRecord
from ftp_deploy.models import model_ref_for
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.serving.batched_generation import LENGTH, STOP, RowRequest, join_caches, take_rows
from ftp_deploy.serving.triton_model import GenerationService, RequestError, TextDelta
from tests.conftest import tiny_model, tiny_tokenizer

# Per-block sparsities that differ, so every layer's cache has its own length.
SCHEDULE = (0.3, 0.1, 0.4, 0.2)
CONTEXT = 2048  # long enough for a stream that outlasts a client (tests/test_serve.py)


def tiny_export(folder: Path, context: int = CONTEXT, dense: bool = False, hidden_size: int = 64) -> Path:
    """A tiny routed LLaMA (static router) exported --with-past: the export folder. Heads of 16 (the default
    `hidden_size`) give the default export's in-place decode cache; hidden_size=48, heads of 12, the concat one."""
    base = tiny_model("llama", max_position_embeddings=context, hidden_size=hidden_size)
    base.save_pretrained(folder / "base")
    tiny_tokenizer().save_pretrained(folder / "base")
    routed = RoutedModel(base, Schedule.from_sparsities(list(SCHEDULE)), RouterSpec(kind="static"))
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, str(folder / "base"))), folder / "run")
    export_onnx(folder / "run", folder / "art", with_past=True, dense=dense)
    return folder / "art"


@pytest.fixture(scope="module")
def art(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_export(tmp_path_factory.mktemp("serve-batching"))


@pytest.fixture(scope="module")
def service(art: Path) -> GenerationService:
    return GenerationService.open(art, threads=1)


def alone(art: Path, row: RowRequest, record: WithPastRecord | None = None) -> list[int]:
    """What `generate --runtime onnxrt` makes of the row: a fresh generator, batch 1, EOS left out."""
    generator = OnnxGenerator.open(art, threads=1)
    generator.record = record or generator.record
    tokens = generator.generate(
        row.prompt[None],
        max_new_tokens=row.max_tokens,
        do_sample=row.do_sample,
        temperature=row.temperature,
        top_p=row.top_p,
        seed=row.seed,
    ).tokens[0]
    eos = set(generator.record.eos_token_ids)
    end = next((i for i, token in enumerate(tokens.tolist()) if token in eos), len(tokens))
    return [int(token) for token in tokens[:end]]


def test_a_batch_of_mixed_rows_equals_each_row_alone(art: Path) -> None:
    assert OnnxGenerator.open(art).record.cache == "inplace"  # the default export's
    rng = np.random.default_rng(0)
    lengths, budgets = (5, 17, 17, 30, 9, 17, 3), (12, 20, 7, 16, 20, 1, 9)
    rows = [RowRequest(rng.integers(4, 96, size=n), m) for n, m in zip(lengths, budgets, strict=True)]
    rows.append(RowRequest(rng.integers(4, 96, size=17), 10, True, 0.8, 0.9, 5))  # sampled, seeded
    # The random model never picks its own end-of-sequence id, so another id plays it: the 4th
    # greedy token of one more row, which then ends on it after 3 tokens.
    generator = OnnxGenerator.open(art, threads=1)
    stopper = rng.integers(4, 96, size=11)
    continuation = generator.generate(stopper[None], max_new_tokens=4, eos_token_ids=[]).tokens[0]
    record = replace(generator.record, eos_token_ids=(int(continuation[3]),))
    generator.record = record
    rows.append(RowRequest(stopper, 40))
    streamed: list[tuple[int, int]] = []
    results = GenerationService(generator, tiny_tokenizer()).run(
        rows, lambda row, token: streamed.append((row, token)) is None
    )
    for row, result in zip(rows, results, strict=True):
        assert result.tokens == alone(art, row, record)
    assert results[-1].finish_reason == STOP and len(results[-1].tokens) <= 3
    assert {result.finish_reason for result in results} == {STOP, LENGTH}
    for index, result in enumerate(results):  # each row's tokens streamed once, in order
        assert [token for row, token in streamed if row == index] == result.tokens
        assert result.ttft_s <= result.total_s


def test_a_row_whose_client_left_stops_and_the_others_go_on(art: Path, service: GenerationService) -> None:
    rows = [RowRequest(np.arange(4, 14), 30), RowRequest(np.arange(20, 26), 30)]
    results = service.run(rows, lambda row, token: row != 0)  # row 0's client is gone at its first token
    assert results[0].finish_reason == "cancelled" and len(results[0].tokens) == 1
    assert results[1].tokens == alone(art, rows[1]) and results[1].finish_reason == LENGTH


def _cache(keys: list[list[float]], valid_or_counts: list[list[bool]] | list[int]) -> OnnxCache:
    """A one-layer cache of one kv head of width 1: keys [B, slots] (values the same), concat or in place."""
    key = np.asarray(keys, dtype=np.float32)[:, None, :, None]
    tensors = {
        "present.0.key": ort.OrtValue.ortvalue_from_numpy(key),
        "present.0.value": ort.OrtValue.ortvalue_from_numpy(key.copy()),
    }
    positions = np.arange(len(keys), dtype=np.int64) + 10
    if isinstance(valid_or_counts[0], list):
        tensors["present.0.valid"] = ort.OrtValue.ortvalue_from_numpy(np.asarray(valid_or_counts, dtype=bool))
        return OnnxCache("x", tensors, positions, 1)
    return OnnxCache("x", tensors, positions, 1, [np.asarray(valid_or_counts, dtype=np.int32)], [len(keys[0])])


def test_caches_join_and_drop_rows_in_both_forms() -> None:
    """A concat cache's slots are padded before (empty, not valid); an in-place cache's buffers after
    each row's count."""
    concat = join_caches([_cache([[1, 2]], [[True, True]]), _cache([[3, 4, 5]], [[False, True, True]])])
    assert concat.numpy(0, "key")[:, 0, :, 0].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert concat.numpy(0, "valid").tolist() == [[False, True, True], [False, True, True]]
    inplace = join_caches([_cache([[1, 2, 0]], [2]), _cache([[3, 4, 5, 0, 0]], [3])])
    assert inplace.numpy(0, "key")[:, 0, :, 0].tolist() == [[1, 2, 0, 0, 0], [3, 4, 5, 0, 0]]
    assert inplace.lengths is not None and inplace.lengths[0].tolist() == [2, 3]
    assert inplace.numpy(0, "valid").tolist() == [[True, True, False, False, False], [True, True, True, False, False]]
    assert inplace.layer_lengths() == [5] and inplace.next_position.tolist() == [10, 10]
    kept = take_rows(inplace, [1])
    assert kept.numpy(0, "value")[:, 0, :, 0].tolist() == [[3, 4, 5, 0, 0]] and kept.lengths is not None
    assert kept.lengths[0].tolist() == [3] and kept.next_position.tolist() == [10]
    assert take_rows(concat, [0]).numpy(0, "valid").tolist() == [[False, True, True]]


def ids(*values: int) -> np.ndarray:
    return np.asarray([values], dtype=np.int64)


def text(value: str) -> np.ndarray:
    return np.asarray([[value.encode()]], dtype=np.object_)


def one(value: object, dtype: type) -> np.ndarray:
    return np.asarray([[value]], dtype=dtype)


@pytest.mark.parametrize(
    ("inputs", "message"),
    [
        ({"text_input": text("   ")}, "the prompt is empty"),
        ({"input_ids": np.zeros((1, 0), np.int64)}, "input_ids holds no tokens"),
        ({}, "text_input (a string) or as input_ids"),
        ({"text_input": text("w1"), "input_ids": ids(5)}, "one of the two"),
        ({"input_ids": np.full((1, CONTEXT), 5)}, f"beyond the export's context of {CONTEXT} positions"),
        ({"input_ids": ids(5, 6), "max_tokens": one(CONTEXT, np.int32)}, f"at most {CONTEXT - 2} new tokens fit"),
        ({"input_ids": ids(5, 6), "max_tokens": one(0, np.int32)}, "max_tokens must be >= 1, got 0"),
        ({"input_ids": ids(5, 96)}, "outside the vocabulary [0, 96)"),
        ({"input_ids": np.full((2, 3), 5)}, "one prompt per request"),
        ({"input_ids": ids(5), "temperature": one(0.5, np.float32)}, "apply with do_sample only"),
        ({"input_ids": ids(5), "do_sample": one(True, bool), "top_p": one(0.0, np.float32)}, "top_p must lie"),
        ({"input_ids": ids(5), "chat": one(True, bool)}, "does not apply to input_ids"),
        ({"prompt": text("w1")}, "unknown input 'prompt'"),
    ],
)
def test_bad_requests_are_request_errors(service: GenerationService, inputs: dict, message: str) -> None:
    with pytest.raises(RequestError) as caught:
        service.parse(inputs)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_text_requests_tokenize_as_generate_does(service: GenerationService) -> None:
    row = service.parse({"text_input": text("w1 w2 w3"), "max_tokens": one(4, np.int32)})
    assert row.prompt.tolist() == service.tokenizer("w1 w2 w3").input_ids and row.max_tokens == 4
    assert not row.do_sample


def test_text_pieces_join_to_the_whole_text(service: GenerationService) -> None:
    tokens = [10, 3, 11, 12, 3]
    delta = TextDelta(service)
    pieces = [delta.add(token) for token in tokens] + [delta.rest()]
    assert "".join(pieces) == service.text(tokens) == "w6 w7 w8"


def test_options_may_come_as_request_parameters(service: GenerationService) -> None:
    row = service.parse({"input_ids": ids(5, 6)}, {"max_tokens": 3, "do_sample": True, "top_p": 0.5, "bad_words": [""]})
    assert (row.max_tokens, row.do_sample, row.top_p) == (3, True, 0.5)  # keys that are no option are left alone
    with pytest.raises(RequestError, match="given twice"):
        service.parse({"input_ids": ids(5), "max_tokens": one(2, np.int32)}, {"max_tokens": 3})
    with pytest.raises(RequestError, match="max_tokens must be int"):
        service.parse({"input_ids": ids(5)}, {"max_tokens": True})
    with pytest.raises(RequestError, match="max_tokens must be >= 1"):
        service.parse({"input_ids": ids(5)}, {"max_tokens": 0})
