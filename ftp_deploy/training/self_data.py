"""`--data self`: blocks sampled from the dense model itself, so training needs no data at all.

Sampling is seeded and the blocks are cached on disk (safetensors) under a key of the
model, the seed and the sampler settings; a cache that cannot be read is sampled again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ftp_deploy.fileio import atomic_write_bytes
from ftp_deploy.models import ModelRef

# Nucleus sampling keeps the text on the model's own distribution without its long tail.
SAMPLER = {"temperature": 1.0, "top_p": 0.95, "top_k": 0}
GENERATION_BATCH = 8
CACHE_VERSION = 1


def cache_folder() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "ftp-deploy" / "self-data"


def self_sampled_blocks(
    model: Any, tokenizer: Any, ref: ModelRef, count: int, seq_len: int, seed: int, folder: Path | None = None
) -> torch.Tensor:
    """[count, seq_len] token ids: a start token, then `seq_len - 1` sampled tokens."""
    key = {"model": ref.ref, "config_hash": ref.config_hash, "count": count, "seq_len": seq_len, "seed": seed}
    digest = hashlib.sha256(json.dumps({**key, **SAMPLER, "version": CACHE_VERSION}, sort_keys=True).encode())
    path = (folder or cache_folder()) / f"{digest.hexdigest()[:32]}.safetensors"
    cached = _read_cache(path, (count, seq_len))
    if cached is not None:
        return cached
    blocks = _sample(model, tokenizer, count, seq_len, seed)
    with contextlib.suppress(OSError):  # the cache only saves time; the blocks themselves are good
        atomic_write_bytes(path, save_safetensors({"blocks": blocks}))
    return blocks


def _read_cache(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    try:
        blocks = load_safetensors(path.read_bytes())["blocks"]
    except (OSError, SafetensorError, KeyError):
        return None
    return blocks if tuple(blocks.shape) == shape else None


@torch.no_grad()
def _sample(model: Any, tokenizer: Any, count: int, seq_len: int, seed: int) -> torch.Tensor:
    start = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    chunks = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for first in range(0, count, GENERATION_BATCH):
            prompt = torch.full((min(GENERATION_BATCH, count - first), 1), start, dtype=torch.long)
            chunks.append(
                model.generate(
                    prompt,
                    attention_mask=torch.ones_like(prompt),
                    do_sample=True,
                    max_new_tokens=seq_len - 1,
                    min_new_tokens=seq_len - 1,  # no early end of sequence: every block is full
                    pad_token_id=tokenizer.pad_token_id,
                    **SAMPLER,
                )
            )
    return torch.cat(chunks)
