"""Text from a routed model: prompt in, continuation out, with the cached generation's times."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ftp_deploy.artifacts import load_routed
from ftp_deploy.errors import ConfigError, UsageError
from ftp_deploy.generation.options import GenerateOptions
from ftp_deploy.generation.settings import GenerationSettings
from ftp_deploy.generation.source import GenerationSource, check_prompt, open_source, resolve_runtime
from ftp_deploy.generation.timed import CallbackTextStreamer, Generation, generate_onnx, generate_routed
from ftp_deploy.models import LoadedModel
from ftp_deploy.placement import CPU, Placement, resolve_placement
from ftp_deploy.progress import NO_PROGRESS, Progress
from ftp_deploy.routed_model import RoutedModel


@dataclass
class TextGeneration:
    """The continuation's text, its tokens and times, and what produced it."""

    text: str
    generation: Generation
    runtime: str
    source: str


def prompt_ids(tokenizer: Any, prompt: str, chat: bool) -> torch.Tensor:
    """[1, T] token ids of the prompt, through the tokenizer's chat template when `chat`."""
    if chat:
        if not getattr(tokenizer, "chat_template", None):
            raise ConfigError("the model's tokenizer has no chat template; leave out --chat")
        encoded = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        ids = encoded["input_ids"]
    else:
        ids = tokenizer(prompt, return_tensors="pt").input_ids
    if ids.shape[1] == 0:
        raise UsageError("the prompt is empty once tokenized")
    return ids


def check_context(prompt_tokens: int, max_new_tokens: int, context: int | None, what: str) -> None:
    """The prompt and the new tokens must fit the positions the model (or the export) was made for."""
    if context is not None and prompt_tokens + max_new_tokens > context:
        raise ConfigError(
            f"the prompt is {prompt_tokens} tokens; with --max-new-tokens {max_new_tokens} that is "
            f"{prompt_tokens + max_new_tokens}, beyond {what} of {context} tokens"
        )


def model_context(config: Any) -> int | None:
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if limit else None


def load_torch(
    source: GenerationSource, model: str | None, trust_remote_code: bool, placement: Placement = CPU
) -> tuple[RoutedModel, LoadedModel]:
    """The routed model in PyTorch: the run folder's, or the run an export was made from."""
    if source.export is None:
        routed, loaded, _ = load_routed(source.folder, model, placement, trust_remote_code=trust_remote_code)
        return routed, loaded
    manifest = source.export.manifest
    if manifest.graph != "routed":
        raise ConfigError(f"{source.folder} holds a {manifest.graph} graph; --runtime torch generates routed models")
    run = source.export.source_run("generate from the run folder itself")
    base = model or manifest.base_model.loaded_from
    routed, loaded, _ = load_routed(run, base, placement, trust_remote_code=trust_remote_code)
    return routed, loaded


def eos_ids(loaded: LoadedModel) -> int | list[int] | None:
    """The model's own end-of-sequence ids (its generation config), else the tokenizer's."""
    configured = getattr(loaded.model.generation_config, "eos_token_id", None)
    return configured if configured is not None else loaded.tokenizer.eos_token_id


def generate(
    source_dir: Path | str,
    prompt: str,
    options: GenerateOptions | None = None,
    on_text: Callable[[str], None] | None = None,
    progress: Progress = NO_PROGRESS,
    **fields: Any,
) -> TextGeneration:
    """Continue `prompt` with the routed model of `source_dir`; `on_text` receives the text as it is made.

    `options` (default GenerateOptions()) with `fields` replaced by name, as the command line names them.
    `runtime` None: PyTorch for a run folder, ONNX Runtime for an export. `threads`: ONNX Runtime's
    intra-op threads (PyTorch keeps its own setting). `device`, `dtype`: where and in what precision
    PyTorch runs the model; ONNX Runtime runs the export as it was written, on its CPU provider.
    """
    opts, source_dir = replace(options or GenerateOptions(), **fields), Path(source_dir)
    check_prompt(prompt)
    settings = opts.settings()
    placement = resolve_placement(opts.device, opts.dtype)
    source = open_source(source_dir)
    runtime = resolve_runtime(opts.runtime, source)
    if opts.threads is not None and runtime != "onnxrt":
        raise UsageError("--threads sets ONNX Runtime's threads; it applies to --runtime onnxrt only")
    if runtime == "onnxrt" and (opts.device.strip().lower() not in ("auto", "cpu") or opts.dtype != "fp32"):
        raise UsageError("--device and --dtype place the PyTorch model; they apply to --runtime torch only")
    if runtime == "onnxrt":
        generation, tokenizer = _generate_onnx(source, prompt, settings, opts.chat, opts.threads, on_text, progress)
    else:
        generation, tokenizer = _generate_torch(
            source, prompt, settings, opts.chat, opts.model, opts.trust_remote_code, on_text, progress, placement
        )
    text = tokenizer.decode(generation.token_ids[0], skip_special_tokens=True)
    return TextGeneration(text, generation, runtime, str(source_dir))


def _generate_torch(
    source: GenerationSource,
    prompt: str,
    settings: GenerationSettings,
    chat: bool,
    model: str | None,
    trust_remote_code: bool,
    on_text: Callable[[str], None] | None,
    progress: Progress,
    placement: Placement,
) -> tuple[Generation, Any]:
    with progress.phase("load the model"):
        routed, loaded = load_torch(source, model, trust_remote_code, placement)
    tokenizer = loaded.tokenizer
    ids = prompt_ids(tokenizer, prompt, chat)
    check_context(ids.shape[1], settings.max_new_tokens, model_context(loaded.model.config), "the model's context")
    streamer = CallbackTextStreamer(tokenizer, on_text) if on_text is not None else None
    generation = generate_routed(
        routed,
        ids,
        torch.ones_like(ids),
        settings,
        pad_token_id=int(tokenizer.pad_token_id),
        eos_token_id=eos_ids(loaded),
        streamer=streamer,
    )
    return generation, tokenizer


def _generate_onnx(
    source: GenerationSource,
    prompt: str,
    settings: GenerationSettings,
    chat: bool,
    threads: int | None,
    on_text: Callable[[str], None] | None,
    progress: Progress,
) -> tuple[Generation, Any]:
    from transformers import AutoTokenizer

    from ftp_deploy.engines.onnx_generation import OnnxGenerator

    with progress.phase("open the ONNX Runtime sessions"):
        generator = OnnxGenerator.open(source.folder, threads=threads)
        tokenizer = AutoTokenizer.from_pretrained(source.folder)
    record = generator.record
    ids = prompt_ids(tokenizer, prompt, chat)
    check_context(ids.shape[1], settings.max_new_tokens, record.max_positions, "the exported model's context")
    streamer = CallbackTextStreamer(tokenizer, on_text) if on_text is not None else None
    ids_np = ids.numpy().astype(np.int64)
    generation = generate_onnx(
        generator, ids_np, np.ones_like(ids_np), settings, list(record.eos_token_ids), streamer=streamer
    )
    return generation, tokenizer
