"""Training data: local text, jsonl and folders, packing and the held-out split, `self` samples."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch

from ftp_deploy.errors import DataError, MissingDependencyError
from ftp_deploy.models import model_ref_for
from ftp_deploy.training.data import DataConfig, load_token_data, read_documents, text_blocks
from ftp_deploy.training.self_data import self_sampled_blocks
from tests.conftest import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIG = DataConfig(seq_len=16, heldout_fraction=0.25, max_heldout=3, self_samples=4)


def words(count: int, seed: int = 0) -> str:
    generator = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(i)}" for i in torch.randint(0, 90, (count,), generator=generator))


def test_text_is_packed_and_split_without_overlap(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text(words(100), encoding="utf-8")
    data = text_blocks(str(tmp_path / "a.txt"), tiny_tokenizer(), CONFIG, seed=0)
    # 100 words + the end-of-sequence token = 101 tokens = 6 blocks of 16.
    assert data.train.shape == (4, 16) and data.heldout.shape == (2, 16)
    stream = tiny_tokenizer()(words(100), add_special_tokens=False)["input_ids"]
    blocks = torch.tensor(stream[:96]).view(6, 16)
    index_of = {tuple(b.tolist()): i for i, b in enumerate(blocks)}
    train = {index_of[tuple(b.tolist())] for b in data.train}
    held = {index_of[tuple(b.tolist())] for b in data.heldout}
    assert train.isdisjoint(held) and train | held == set(range(6))
    again = text_blocks(str(tmp_path / "a.txt"), tiny_tokenizer(), CONFIG, seed=0)
    assert torch.equal(again.train, data.train) and again.fingerprint == data.fingerprint


def test_jsonl_and_folders(tmp_path: Path) -> None:
    records = [{"text": words(20, seed)} for seed in range(3)]
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    (tmp_path / "c.utf8").write_text("w1 w2", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not read", encoding="utf-8")
    assert read_documents(str(tmp_path / "b.jsonl")) == [r["text"] for r in records]
    assert read_documents(str(tmp_path)) == [*(r["text"] for r in records), "w1 w2"]


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("empty.txt", b"", "gives 0 tokens, fewer than one block of --seq-len 16"),
        ("short.txt", b"w1 w2 w3", "gives 4 tokens, fewer than one block"),
        ("one.txt", words(20).encode(), "gives 21 tokens, only one block"),
        ("latin1.txt", "caf\xe9 w1".encode("latin-1"), "is not UTF-8 text"),
        ("bad.jsonl", b'{"text": "w1"}\n{"txt": "w2"}\n', "line 2 has no string field 'text'"),
        ("broken.jsonl", b'{"text": "w1"\n', "line 1 is not JSON"),
        ("table.csv", b"a,b", "unsupported file type"),
    ],
)
def test_bad_data_is_a_data_error(tmp_path: Path, name: str, content: bytes, fragment: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=re.escape(fragment)):
        text_blocks(str(path), tiny_tokenizer(), CONFIG, seed=0)


def test_missing_sources_are_data_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data not found"):
        read_documents(str(tmp_path / "nothing.txt"))
    with pytest.raises(DataError, match="holds no"):
        read_documents(str(tmp_path))


def test_hub_dataset_without_the_datasets_library(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MissingDependencyError, match=r"ftp-deploy\[data\]"):
        read_documents("wikitext2")


def test_self_samples_are_seeded_and_cached(tmp_path: Path) -> None:
    model = tiny_model()
    ref = model_ref_for(model, "tiny")
    first = self_sampled_blocks(model, tiny_tokenizer(), ref, 3, 12, seed=5, folder=tmp_path)
    assert first.shape == (3, 12) and bool((first[:, 0] == tiny_tokenizer().bos_token_id).all())
    assert len(list(tmp_path.glob("*.safetensors"))) == 1

    def no_generation(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cached blocks should have been used")

    model.generate = no_generation  # type: ignore[method-assign]
    assert torch.equal(self_sampled_blocks(model, tiny_tokenizer(), ref, 3, 12, seed=5, folder=tmp_path), first)
    other = self_sampled_blocks(tiny_model(), tiny_tokenizer(), ref, 3, 12, seed=6, folder=tmp_path)
    assert not torch.equal(other, first)


def test_self_source_splits_the_sampled_blocks() -> None:
    def sample(count: int, seq_len: int, seed: int) -> torch.Tensor:
        return torch.arange(count * seq_len).view(count, seq_len)

    data = load_token_data("self", tiny_tokenizer(), CONFIG, seed=0, sample=sample)
    assert data.source == "self" and data.train.shape == (3, 16) and data.heldout.shape == (1, 16)
