"""A converted copy of a GGUF model, so that only the first load pays for reading and dequantizing it.

transformers parses a GGUF file once for the config, once for the tokenizer and once for the
weights, and dequantizes every tensor: about 30 s for the embedded SmolLM2 on two cores, in every
command. The first fp32 load writes the dequantized weights (safetensors) and the tokenizer as a
Hugging Face folder under the cache root; later loads read that folder in about a second, with
the same weights, tokenizer and architecture hash. The folder's name holds a hash of the GGUF
file's path, size and modification time and of the transformers version that converted it; it
is written in a hidden sibling and renamed into place, so a partial copy is never read.

The cache root is ftp_deploy/cache_dir.py's.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ftp_deploy.cache_dir import CACHE_ENV, cache_root, write_folder

__all__ = ["CACHE_ENV", "cached_folder", "find_converted", "store_converted"]

MARKER = "ftp-deploy-gguf.json"


def cached_folder(gguf: Path) -> Path:
    import transformers

    stat = gguf.stat()
    identity = f"{gguf.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{transformers.__version__}"
    return cache_root() / f"{gguf.stem}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"


def find_converted(gguf: Path) -> Path | None:
    """The converted folder of `gguf`, if a complete one exists."""
    folder = cached_folder(gguf)
    return folder if (folder / MARKER).is_file() else None


def store_converted(gguf: Path, model: Any, tokenizer: Any) -> Path | None:
    """Write the loaded (fp32) model and tokenizer as the converted folder; None where it cannot be written."""
    folder = cached_folder(gguf)

    def write(staging: Path) -> None:
        _plain_model(model).save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        (staging / MARKER).write_text(json.dumps({"gguf": str(gguf.resolve())}), encoding="utf-8")

    return folder if write_folder(folder, write) else None


def _plain_model(model: Any) -> Any:
    """The same weights in a model without GGUF's quantization config, which save_pretrained refuses."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(model.state_dict(), assign=True)
    plain.tie_weights()
    return plain
