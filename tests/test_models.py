"""Loading base models: local folders, the embedded SmolLM2, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ftp_deploy.errors import ModelLoadError, UnsupportedArchitectureError
from ftp_deploy.models import check_architecture, load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import tiny_tokenizer


def test_local_folder_loads_frozen(tiny_model_dir: Path) -> None:
    loaded = load_base_model(str(tiny_model_dir))
    assert loaded.ref.model_type == "llama" and loaded.ref.num_layers == 4
    assert all(not p.requires_grad for p in loaded.model.parameters())
    assert len(loaded.ref.config_hash) == 64


def test_unsupported_architecture_names_the_supported_ones(tmp_path: Path) -> None:
    folder = tmp_path / "gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=96)).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    with pytest.raises(UnsupportedArchitectureError, match=r"'gpt2' is not supported.*llama, mistral, qwen2, qwen3"):
        load_base_model(str(folder))
    with pytest.raises(UnsupportedArchitectureError):
        check_architecture(GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=96)))


@pytest.mark.parametrize("model", ["./no/such/folder", "/no/such/model.gguf", "missing.gguf"])
def test_missing_paths_are_clear(model: str) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        load_base_model(model)


def test_unknown_dtype() -> None:
    with pytest.raises(ModelLoadError, match="unknown dtype"):
        load_base_model("smollm2-135m", dtype="fp8")


def test_smollm2_loads_offline_and_routes_256_tokens(smollm2) -> None:
    assert smollm2.ref.model_type == "llama" and smollm2.ref.num_layers == 30
    routed = RoutedModel(smollm2.model, Schedule.uniform(0.3, 30), RouterSpec(kind="static"))
    text = "The quick brown fox jumps over the lazy dog. " * 40
    ids = smollm2.tokenizer(text, return_tensors="pt").input_ids[:, :256]
    assert ids.shape[1] == 256
    with torch.no_grad():
        out = routed(ids, logits_to_keep=1)
    assert out.logits.shape == (1, 1, 49152) and torch.isfinite(out.logits).all()
    assert all(int(keep.sum()) == 256 - (256 * 300) // 1000 for keep in out.keep)
    # The routed model still continues the repetition correctly.
    assert smollm2.tokenizer.decode(out.logits[0, -1].argmax()).strip() in {"The", "the", "fox"}
