"""Loading base models: local folders, the embedded SmolLM2, and clear errors for bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from ftp_deploy import cli
from ftp_deploy.errors import ConfigError, ModelLoadError, UnsupportedArchitectureError
from ftp_deploy.models import check_architecture, load_base_model
from ftp_deploy.placement import Placement
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import tiny_model, tiny_tokenizer


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
    with pytest.raises(ConfigError, match="unknown dtype"):
        load_base_model("smollm2-135m", Placement(dtype="fp8"))


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


def test_a_sliding_window_that_can_cut_a_sequence_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    windowed = tiny_model("mistral", sliding_window=8)
    with pytest.raises(UnsupportedArchitectureError, match=r"'mistral' attends through a sliding window of 8 tokens"):
        RoutedModel(windowed, Schedule.uniform(0.2, 4), RouterSpec(kind="static"))
    qwen = tiny_model("qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=2)
    with pytest.raises(UnsupportedArchitectureError, match="sliding window of 8 tokens"):
        check_architecture(qwen)
    windowed.save_pretrained(tmp_path / "mistral")
    tiny_tokenizer().save_pretrained(tmp_path / "mistral")
    capsys.readouterr()  # save_pretrained's progress bar
    code = cli.main(["run", "--model", str(tmp_path / "mistral"), "--prompt", "w1 w2", "--max-new-tokens", "1"])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "sliding window of 8 tokens" in err and "Traceback" not in err


def test_a_window_as_long_as_the_positions_routes_like_transformers() -> None:
    """Mistral's window at max_position_embeddings never cuts a sequence: accepted, and exact."""
    base = tiny_model("mistral", sliding_window=512)
    ids = torch.randint(4, 90, (2, 40), generator=torch.Generator().manual_seed(0))
    routed = RoutedModel(base, Schedule.uniform(0.0, 4), RouterSpec(kind="static"))
    with torch.no_grad():
        torch.testing.assert_close(routed(ids).logits, base(ids).logits, atol=1e-5, rtol=1e-5)
