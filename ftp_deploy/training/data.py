"""Training text: local files, Hugging Face datasets or the model's own samples, packed into blocks.

Documents are tokenized without special tokens, joined with the end-of-sequence token and
cut into `seq_len`-token blocks. A seeded permutation of the blocks gives the held-out
blocks and the training blocks; no token is in both.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ftp_deploy.errors import DataError, MissingDependencyError
from ftp_deploy.formats.run_state import DataRecord
from ftp_deploy.training.config import SELF_SOURCE, DataConfig
from ftp_deploy.training.config import default_source as default_source

TEXT_SUFFIXES = (".txt", ".raw", ".utf8")
JSONL_SUFFIX = ".jsonl"


@dataclass(frozen=True)
class HubDataset:
    """A Hugging Face dataset behind a short `--data` name; `lines` marks records that are the
    lines of one running text (wikitext), joined back rather than ended one by one."""

    path: str
    config: str | None
    split: str
    field: str
    records: int
    lines: bool = False


HUB_DATASETS = {
    "wikitext2": HubDataset("wikitext", "wikitext-2-raw-v1", "train", "text", 40_000, lines=True),
    "c4": HubDataset("allenai/c4", "en", "train", "text", 4_000),
    "alpaca": HubDataset("tatsu-lab/alpaca", None, "train", "text", 10_000),
}


@dataclass
class TokenData:
    """Blocks [N, seq_len] for training and [M, seq_len] held out, with where they came from."""

    train: torch.Tensor
    heldout: torch.Tensor
    source: str
    fingerprint: str

    def describe(self) -> DataRecord:
        return DataRecord(
            source=self.source,
            fingerprint=self.fingerprint,
            train_blocks=int(self.train.shape[0]),
            heldout_blocks=int(self.heldout.shape[0]),
            seq_len=int(self.train.shape[1]),
        )


def read_documents(source: str) -> list[str]:
    """Documents of a local file or folder, or of a hub dataset named in HUB_DATASETS."""
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (*TEXT_SUFFIXES, JSONL_SUFFIX))
        if not files:
            raise DataError(f"{path} holds no {', '.join((*TEXT_SUFFIXES, JSONL_SUFFIX))} files")
        return [doc for file in files for doc in _file_documents(file)]
    if path.is_file():
        return _file_documents(path)
    if source in HUB_DATASETS:
        return _hub_documents(source)
    raise DataError(
        f"data not found: {source!r} is neither a file or folder nor one of {', '.join((*HUB_DATASETS, SELF_SOURCE))}"
    )


def _file_documents(path: Path) -> list[str]:
    if path.suffix not in (*TEXT_SUFFIXES, JSONL_SUFFIX):
        raise DataError(f"{path}: unsupported file type; use {', '.join((*TEXT_SUFFIXES, JSONL_SUFFIX))}")
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise DataError(f"{path} is not UTF-8 text (byte {err.start}: {err.reason})") from err
    except OSError as err:
        raise DataError(f"{path} could not be read: {err.strerror}") from err
    if path.suffix != JSONL_SUFFIX:
        return [text]
    documents = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path} line {number} is not JSON: {err.msg}") from err
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise DataError(f"{path} line {number} has no string field 'text'")
        documents.append(record["text"])
    return documents


def _hub_documents(name: str) -> list[str]:
    try:
        import datasets
    except ImportError as err:
        raise MissingDependencyError(
            f"--data {name} needs the Hugging Face datasets library: pip install 'ftp-deploy[data]'"
        ) from err
    hub = HUB_DATASETS[name]
    try:
        records = datasets.load_dataset(hub.path, hub.config, split=hub.split, streaming=True)
        texts = [str(record[hub.field]) for record, _ in zip(records, range(hub.records), strict=False)]
    except Exception as err:  # the hub raises many types (network, auth, schema); all mean "not loaded"
        raise DataError(f"could not load the Hugging Face dataset {hub.path!r}: {err}") from err
    return ["".join(texts)] if hub.lines else [text for text in texts if text]


def tokenize_documents(documents: list[str], tokenizer: Any) -> torch.Tensor:
    """One stream of token ids: each document's tokens, then the end-of-sequence token."""
    eos = tokenizer.eos_token_id
    encoded = tokenizer(documents, add_special_tokens=False, verbose=False)["input_ids"]
    stream = [token for ids in encoded if ids for token in (*ids, eos)]
    return torch.tensor(stream, dtype=torch.long)


def split_blocks(blocks: torch.Tensor, config: DataConfig, seed: int, source: str) -> TokenData:
    """Seeded split of whole blocks into held-out and training ones."""
    count = int(blocks.shape[0])
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed))
    held = min(config.max_heldout, count - 1, max(1, round(count * config.heldout_fraction)))
    digest = hashlib.sha256(blocks.numpy().tobytes()).hexdigest()
    return TokenData(train=blocks[order[held:]], heldout=blocks[order[:held]], source=source, fingerprint=digest)


def text_blocks(source: str, tokenizer: Any, config: DataConfig, seed: int) -> TokenData:
    """Blocks from local text or a hub dataset."""
    stream = tokenize_documents(read_documents(source), tokenizer)
    count = stream.numel() // config.seq_len
    if count < 2:
        size = "fewer than one block" if count == 0 else "only one block"
        raise DataError(
            f"{source} gives {stream.numel()} tokens, {size} of --seq-len {config.seq_len}; "
            "at least 2 blocks are needed (one to train on, one held out)"
        )
    return split_blocks(stream[: count * config.seq_len].view(count, config.seq_len), config, seed, source)


BlockSampler = Callable[[int, int, int], torch.Tensor]


def load_token_data(source: str, tokenizer: Any, config: DataConfig, seed: int, sample: BlockSampler) -> TokenData:
    """Blocks from `source`; `self` asks `sample(count, seq_len, seed)` for the model's own text."""
    if source == SELF_SOURCE:
        return split_blocks(sample(config.self_samples, config.seq_len, seed), config, seed, source)
    return text_blocks(source, tokenizer, config, seed)
