"""The generation model Triton serves, without Triton: its tensors, request checks, the batch loop, its outputs.

`serving/model.py` (the Python-backend file copied into a model repository) is a thin layer over
this module, so everything here runs and is tested in-process as well. The tensor lists below are
the one definition of the model's interface: the repository writer builds `config.pbtxt` from them.

Inputs (each request one prompt; Triton's batch axis first, so a request's tensors are [1, ...]):
`text_input` (a string) or `input_ids` (token ids), and optionally `max_tokens`, `do_sample`,
`temperature`, `top_p`, `seed`, `chat` (wrap `text_input` in the tokenizer's chat template); these
options may come as request parameters instead (what clients of Triton's `generate` endpoint send:
`{"text_input": ..., "parameters": {"max_tokens": 32}}`). Their meaning and defaults are
`ftp-deploy generate`'s: greedy unless `do_sample`; the sampling options apply only with it.

Outputs: `token_ids` (generated, end-of-sequence left out), `text_output`, `finish_reason` ("stop":
end-of-sequence, "length": `max_tokens` reached), `prompt_tokens`, `ttft_ms` and `total_ms` (from
the moment the model instance took the batch), `decode_ms_per_token` (NaN for a single token).
The streaming model sends one response per token (`token_ids` [1, 1] and the text it adds) and a
last one with `finish_reason`, the rest of the text and the times.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftp_deploy.serving.batched_generation import RowRequest, RowResult, TokenSink, generate_rows

DEFAULT_MAX_TOKENS = 64  # `ftp-deploy generate --max-new-tokens`'s default


class RequestError(ValueError):
    """A request the model cannot take; its message is the error response the client receives."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of the model as config.pbtxt declares it (dims after the batch axis)."""

    name: str
    data_type: str  # Triton's DataType name
    dims: tuple[int, ...]
    optional: bool = False


INPUTS = (
    TensorSpec("text_input", "TYPE_STRING", (1,), optional=True),
    TensorSpec("input_ids", "TYPE_INT64", (-1,), optional=True),
    TensorSpec("max_tokens", "TYPE_INT32", (1,), optional=True),
    TensorSpec("do_sample", "TYPE_BOOL", (1,), optional=True),
    TensorSpec("temperature", "TYPE_FP32", (1,), optional=True),
    TensorSpec("top_p", "TYPE_FP32", (1,), optional=True),
    TensorSpec("seed", "TYPE_INT64", (1,), optional=True),
    TensorSpec("chat", "TYPE_BOOL", (1,), optional=True),
)
OUTPUTS = (
    TensorSpec("token_ids", "TYPE_INT64", (-1,)),
    TensorSpec("text_output", "TYPE_STRING", (1,)),
    TensorSpec("finish_reason", "TYPE_STRING", (1,)),
    TensorSpec("prompt_tokens", "TYPE_INT32", (1,)),
    TensorSpec("ttft_ms", "TYPE_FP32", (1,)),
    TensorSpec("decode_ms_per_token", "TYPE_FP32", (1,)),
    TensorSpec("total_ms", "TYPE_FP32", (1,)),
)
INPUT_NAMES = tuple(spec.name for spec in INPUTS)


class GenerationService:
    """An export's generator and tokenizer behind the request checks; one per model instance."""

    def __init__(self, generator: Any, tokenizer: Any) -> None:
        self.generator = generator
        self.tokenizer = tokenizer
        self.context = int(generator.record.max_positions)
        logits = generator.prefill_session.get_outputs()[0].shape[-1]
        self.vocab = int(logits) if isinstance(logits, int) else len(tokenizer)

    @classmethod
    def open(cls, folder: Path, threads: int | None = None) -> GenerationService:
        """The service of a --with-past export folder (its manifest checked, its tokenizer loaded from it)."""
        from transformers import AutoTokenizer

        from ftp_deploy.engines.onnx_generation import OnnxGenerator

        generator = OnnxGenerator.open(folder, threads=threads)
        return cls(generator, AutoTokenizer.from_pretrained(folder))

    # -- requests -------------------------------------------------------------------------------

    def parse(self, inputs: Mapping[str, np.ndarray], parameters: Mapping[str, Any] | None = None) -> RowRequest:
        """A request's tensors (name -> array with the batch axis first) as a checked row, else RequestError.

        `parameters`: the request's parameters (Triton's `parameters`, which clients of its `generate`
        endpoint send the options in); the options among them count as inputs, other keys are left alone.
        """
        inputs = {**inputs, **_options(parameters or {}, inputs)}
        unknown = sorted(set(inputs) - set(INPUT_NAMES))
        if unknown:  # Triton refuses these before the model sees them; kept for in-process callers
            raise RequestError(f"unknown input {unknown[0]!r}; the inputs are {', '.join(INPUT_NAMES)}")
        for name, array in inputs.items():
            if array.ndim < 1 or array.shape[0] != 1:
                raise RequestError(
                    f"one prompt per request: {name} has batch size {array.shape[0] if array.ndim else 0}, expected 1 "
                    "(Triton batches concurrent requests itself)"
                )
        prompt = self._prompt(inputs)
        max_tokens = _scalar(inputs, "max_tokens", int, DEFAULT_MAX_TOKENS)
        if max_tokens < 1:
            raise RequestError(f"max_tokens must be >= 1, got {max_tokens}")
        if prompt.shape[0] >= self.context:
            raise RequestError(
                f"the prompt ({prompt.shape[0]} tokens) is beyond the export's context of {self.context} positions"
            )
        if prompt.shape[0] + max_tokens > self.context:
            raise RequestError(
                f"the prompt ({prompt.shape[0]} tokens) plus max_tokens {max_tokens} is "
                f"{prompt.shape[0] + max_tokens} tokens, beyond the export's context of {self.context}; "
                f"at most {self.context - prompt.shape[0]} new tokens fit"
            )
        do_sample = _scalar(inputs, "do_sample", bool, False)
        if not do_sample and any(name in inputs for name in ("temperature", "top_p", "seed")):
            raise RequestError("temperature, top_p and seed apply with do_sample only")
        temperature = _scalar(inputs, "temperature", float, 1.0)
        top_p = _scalar(inputs, "top_p", float, 1.0)
        if not (math.isfinite(temperature) and temperature > 0):
            raise RequestError(f"temperature must be > 0, got {temperature:g}")
        if not 0 < top_p <= 1:
            raise RequestError(f"top_p must lie in (0, 1], got {top_p:g}")
        seed = _scalar(inputs, "seed", int, None) if "seed" in inputs else None
        if seed is not None and seed < 0:
            raise RequestError(f"seed must be >= 0, got {seed}")
        return RowRequest(prompt, max_tokens, do_sample, temperature, top_p, seed)

    def _prompt(self, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
        chat = _scalar(inputs, "chat", bool, False)
        if ("text_input" in inputs) == ("input_ids" in inputs):
            raise RequestError("send the prompt as text_input (a string) or as input_ids (token ids), one of the two")
        if "input_ids" in inputs:
            if chat:
                raise RequestError("chat wraps text_input in the chat template; it does not apply to input_ids")
            ids = inputs["input_ids"]
            if ids.ndim != 2:
                raise RequestError(f"input_ids must be [1, tokens], got shape {list(ids.shape)}")
            if ids.shape[1] == 0:
                raise RequestError("the prompt is empty (input_ids holds no tokens)")
            if int(ids.min()) < 0 or int(ids.max()) >= self.vocab:
                raise RequestError(f"input_ids holds token ids outside the vocabulary [0, {self.vocab})")
            return ids[0].astype(np.int64)
        text = inputs["text_input"].reshape(-1)
        if text.shape[0] != 1:
            raise RequestError(f"text_input must hold one string, got shape {list(inputs['text_input'].shape)}")
        value = text[0]
        try:
            prompt = value.decode("utf-8") if isinstance(value, bytes) else str(value)
        except UnicodeDecodeError as err:
            raise RequestError(f"text_input is not UTF-8 text ({err})") from err
        if not prompt.strip():
            raise RequestError("the prompt is empty")
        return np.asarray(self.encode(prompt, chat), dtype=np.int64)

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        """The prompt's token ids as `ftp-deploy generate` makes them (`--chat`: through the chat template)."""
        if chat:
            if not getattr(self.tokenizer, "chat_template", None):
                raise RequestError("the export's tokenizer has no chat template; leave out chat")
            encoded = self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True
            )
            ids = list(encoded["input_ids"])
        else:
            ids = list(self.tokenizer(prompt).input_ids)
        if not ids:
            raise RequestError("the prompt is empty once tokenized")
        return [int(i) for i in ids]

    # -- generation and outputs -----------------------------------------------------------------

    def run(self, rows: list[RowRequest], on_token: TokenSink | None = None) -> list[RowResult]:
        return generate_rows(self.generator, rows, on_token)

    def text(self, tokens: list[int]) -> str:
        return str(self.tokenizer.decode(tokens, skip_special_tokens=True))

    def outputs(self, row: RowRequest, result: RowResult, text: str | None = None) -> dict[str, np.ndarray]:
        """The unary model's outputs for one row ([1, ...] each); `text` replaces the decoded text (streaming)."""
        decode = result.decode_ms_per_token
        return {
            "token_ids": np.asarray([result.tokens], dtype=np.int64),
            "text_output": _strings(self.text(result.tokens) if text is None else text),
            "finish_reason": _strings(result.finish_reason),
            "prompt_tokens": np.asarray([[row.prompt.shape[0]]], dtype=np.int32),
            "ttft_ms": np.asarray([[result.ttft_s * 1e3]], dtype=np.float32),
            "decode_ms_per_token": np.asarray([[math.nan if decode is None else decode]], dtype=np.float32),
            "total_ms": np.asarray([[result.total_s * 1e3]], dtype=np.float32),
        }


class TextDelta:
    """The text each new token adds, as the decoded whole grows; a token that ends inside a multi-byte
    character (decoded as U+FFFD) waits for the next one, so the pieces always join to the final text."""

    def __init__(self, service: GenerationService) -> None:
        self.service = service
        self.tokens: list[int] = []
        self.sent = ""

    def add(self, token: int) -> str:
        self.tokens.append(token)
        text = self.service.text(self.tokens)
        if text.endswith("\ufffd"):
            return ""
        return self._advance(text)

    def rest(self) -> str:
        return self._advance(self.service.text(self.tokens))

    def _advance(self, text: str) -> str:
        piece = text[len(self.sent) :] if text.startswith(self.sent) else text
        self.sent = text
        return piece


# The options a request may also give as request parameters, and the JSON types each takes.
PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "max_tokens": (int,),
    "do_sample": (bool,),
    "temperature": (int, float),
    "top_p": (int, float),
    "seed": (int,),
    "chat": (bool,),
}


def _options(parameters: Mapping[str, Any], inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    options = {}
    for name, kinds in PARAMETER_TYPES.items():
        if name not in parameters:
            continue
        value = parameters[name]
        if name in inputs:
            raise RequestError(f"{name} is given twice: as an input and as a request parameter")
        # bool is an int in Python; an int option must not take true/false, nor a bool option 0/1
        if not isinstance(value, kinds) or (bool not in kinds and isinstance(value, bool)):
            raise RequestError(f"the request parameter {name} must be {' or '.join(k.__name__ for k in kinds)}")
        options[name] = np.asarray([[value]])
    return options


def _scalar(inputs: Mapping[str, np.ndarray], name: str, kind: type, default: Any) -> Any:
    if name not in inputs:
        return default
    array = inputs[name].reshape(-1)
    if array.shape[0] != 1:
        raise RequestError(f"{name} must hold one value, got shape {list(inputs[name].shape)}")
    return kind(array[0].item())


def _strings(text: str) -> np.ndarray:
    return np.asarray([[text.encode("utf-8")]], dtype=np.object_)
