"""Generation over the graphs of a --with-past export in ONNX Runtime (FTP_SPEC section 9).

The prefill graph routes the prompt once and returns every layer's compacted cache (K_l slots,
each layer its own length, each row's valid slots first); the decode graph takes one token per row,
its position and every layer's cache, and returns the next-token logits. The caches stay ORT values
between steps (IO binding), in one of two forms (WithPastRecord.cache):

- in place (--engine onnx): at the hand-over each layer's slots are copied once into a buffer of
  capacity C_l = K_l + max_new_tokens, and each row's cached count is kept beside it. Every step binds
  the same buffers as past input and present output, so GroupQueryAttention writes the new key and
  value into them and nothing is copied; a step beyond the capacity is refused.
- concat (the standard-op graph TensorRT takes): each step returns every cache one slot longer, bound
  as the next step's past input without passing through numpy.

An in-place export also holds both graphs under one If (generator.onnx, exporters/merge.py): one
session, one copy of the weights in memory; the two-session form serves the concat graphs.

onnxruntime-genai's generator cannot drive these graphs: it allocates every layer's present
key/value with one sequence length (the total length, or a sliding window's cap), and feeds one
attention mask for all layers (README, "Why not onnxruntime-genai").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ftp_deploy.engines.onnx_runtime import SessionFromOnnx, SessionOptionsLoader
from ftp_deploy.engines.prepacked import prepacked_graph
from ftp_deploy.engines.widen import cpu_runnable
from ftp_deploy.errors import (
    ArtifactError,
    CacheCapacityError,
    CacheMismatchError,
    PrefillOnlyExportError,
    PromptError,
)
from ftp_deploy.formats.export_manifest import (
    BRANCH_INPUT,
    CACHE_FORMS,
    CPU_NATIVE_DTYPES,
    DECODE_INPUT_NAMES,
    DECODER_FILE,
    INPUT_NAMES,
    ExportedArtifact,
    WithPastRecord,
    cache_names,
    past_name,
    present_name,
)
from ftp_deploy.generation.sampling import Sampler

TokenCallback = Callable[[np.ndarray, int], None]  # (the new token of every row [B], step index)


@dataclass
class OnnxCache:
    """Every layer's cache as ORT values and each row's next position.

    `export_id` names the export whose graphs made it (their sha256s): a cache only fits those graphs.
    Concat form: `tensors` holds key, value and valid per layer. In place: key and value buffers of
    `capacity()[l]` slots, and `lengths[l]` [B] int32, each row's cached count (its entries fill slots
    [0, count)); `filled[l]` is the slot count a concat cache would have (K_l plus the decoded tokens).
    """

    export_id: str
    tensors: dict[str, ort.OrtValue]
    next_position: np.ndarray  # [B] int64: the number of valid tokens so far in each row
    num_layers: int
    lengths: list[np.ndarray] | None = None
    filled: list[int] | None = None

    @property
    def batch(self) -> int:
        return int(self.next_position.shape[0])

    def capacity(self) -> list[int]:
        """Each layer's slots: a buffer's capacity in place, the cache's length otherwise."""
        return [int(self.tensors[present_name(layer, "key")].shape()[2]) for layer in range(self.num_layers)]

    def layer_lengths(self) -> list[int]:
        """Each layer's cached slots for the batch (K_l + tokens decoded), whichever the form."""
        return list(self.filled) if self.filled is not None else self.capacity()

    def kv_bytes(self) -> int:
        """Bytes held for keys and values (in place: the whole buffers; slot masks and counts excluded)."""
        total = 0
        for layer in range(self.num_layers):
            for part in ("key", "value"):
                value = self.tensors[present_name(layer, part)]
                total += int(np.prod(value.shape())) * np.dtype(_NUMPY_TYPES[value.data_type()]).itemsize
        return total

    def numpy(self, layer: int, part: str) -> np.ndarray:
        """A copy of one layer's `part` ("key", "value", "valid") as numpy; in place, valid marks [0, count)."""
        if part == "valid" and self.lengths is not None:
            slots = np.arange(self.capacity()[layer])
            return slots[None, :] < self.lengths[layer][:, None]
        # An OrtValue over a numpy buffer (the in-place form's) may hand back that very buffer, not a copy.
        return np.array(self.tensors[present_name(layer, part)].numpy(), copy=True)


_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(bool)": np.bool_}


@dataclass
class GeneratedTokens:
    """`tokens` [B, n] generated after the prompt (rows that ended early are padded with `pad_token_id`),
    `finished` [B] whether each row produced an end-of-sequence token."""

    tokens: np.ndarray
    finished: np.ndarray
    steps: int


class OnnxGenerator:
    """Routed (or dense) generation with a per-layer KV cache over a --with-past export.

        generator = OnnxGenerator.open(art_dir, threads=2)
        logits = generator.prefill(input_ids, attention_mask)  # [B, vocab], fills generator.cache
        logits = generator.decode(next_tokens)                   # [B, 1] -> [B, vocab]
        result = generator.generate(input_ids, attention_mask, max_new_tokens=64)

    Prompts are left-padded (every row's last token valid). The model's context
    (`record.max_positions`) bounds prompt plus generated tokens.
    """

    def __init__(
        self,
        prefill_session: ort.InferenceSession,
        decode_session: ort.InferenceSession,
        record: WithPastRecord,
        export_id: str,
    ) -> None:
        self.prefill_session = prefill_session
        self.decode_session = decode_session
        # One session over the generator graph: each call names its branch and fills the other's inputs.
        merged = prefill_session is decode_session
        self._prefill_feed = _placeholders(prefill_session, False) if merged else {}
        self._decode_feed = _placeholders(decode_session, True) if merged else {}
        self.record = record
        self.export_id = export_id
        self.cache: OnnxCache | None = None
        if record.cache not in CACHE_FORMS:
            raise ArtifactError(
                f"the manifest's decode cache form {record.cache!r} is unknown (one of {', '.join(CACHE_FORMS)})"
            )
        # The prefill hands every layer over as key, value and valid, whatever the decode graph's form.
        self._handed_over = cache_names(record.num_layers, present_name)
        self._present = cache_names(record.num_layers, present_name, record.present_parts())
        self._past = cache_names(record.num_layers, past_name, record.present_parts())

    @classmethod
    def open(
        cls, folder: Path, threads: int | None = None, fp32_arithmetic: bool = False, prepack: bool = True
    ) -> OnnxGenerator:
        """The generator of an export folder whose files match its manifest; `threads` intra-op threads.

        An in-place export runs its generator graph in one session, through its prepacked copy under the
        cache root (engines/prepacked.py, written on first use) unless `prepack` is False.

        `fp32_arithmetic` runs the graphs as parity compares them (engines/widen.cpu_runnable), not as shipped.
        """
        artifact = ExportedArtifact.open(folder)
        manifest = artifact.manifest
        if manifest.with_past is None or "decode" not in manifest.graphs:
            raise PrefillOnlyExportError(
                f"{folder} is a prefill-only export (no {DECODER_FILE}): re-export it with --with-past to generate"
            )
        if manifest.dtype not in CPU_NATIVE_DTYPES and not fp32_arithmetic:
            raise ArtifactError(
                f"{folder} holds {manifest.dtype} graphs, which ONNX Runtime's CPU provider has no kernels for: "
                "generate from an fp32 or fp16 export (verify compares this one widened to fp32)"
            )
        quantized = manifest.quantization is not None
        export_id = ";".join(f"{role}={digest}" for role, digest in sorted(manifest.graph_hashes.items()))
        if "generate" in manifest.graphs:
            merged = artifact.graph_path("generate")
            if fp32_arithmetic:
                runnable = cpu_runnable(merged, manifest.dtype, quantized)
                return cls.from_generator_file(runnable, manifest.with_past, export_id, threads, prepacking=quantized)
            packed = prepacked_graph(merged, manifest.graph_hashes["generate"]) if prepack else None
            if packed is not None:  # its blobs are shared by both branches: packed, and one copy
                return cls.from_generator_file(packed, manifest.with_past, export_id, threads, prepacking=True)
            return cls.from_generator_file(merged, manifest.with_past, export_id, threads, prepacking=quantized)
        prefill: Path | bytes = artifact.graph_path("prefill")
        decode: Path | bytes = artifact.graph_path("decode")
        if fp32_arithmetic:
            prefill = cpu_runnable(artifact.graph_path("prefill"), manifest.dtype, quantized)
            decode = cpu_runnable(artifact.graph_path("decode"), manifest.dtype, quantized)
        return cls.from_files(prefill, decode, manifest.with_past, export_id=export_id, threads=threads)

    @classmethod
    def from_generator_file(
        cls, graph: Path | bytes, record: WithPastRecord, export_id: str, threads: int | None, prepacking: bool
    ) -> OnnxGenerator:
        """One session over the generator graph (file or serialized): prefill and decode share its weights.

        With `prepacking` each branch's kernels pack a copy of the weights of their own, two in all, unless
        the graph is the prepacked copy (engines/prepacked.py); without, float MatMuls read the stored
        weights. A quantized graph's MatMulNBits computes from packed blocks only: it needs prepacking.
        """
        session = SessionFromOnnx(graph, options=SessionOptionsLoader(threads=threads, prepacking=prepacking))()
        return cls(session, session, record, export_id)

    @classmethod
    def from_files(
        cls,
        prefill: Path | bytes,
        decode: Path | bytes,
        record: WithPastRecord,
        export_id: str,
        threads: int | None = None,
    ) -> OnnxGenerator:
        """Sessions over the two graphs, files or serialized (validation uses this before the manifest exists)."""
        options = SessionOptionsLoader(threads=threads)
        return cls(
            SessionFromOnnx(prefill, options=options)(), SessionFromOnnx(decode, options=options)(), record, export_id
        )

    # -- one step at a time ---------------------------------------------------------------------

    def check_prompt(self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int = 0) -> None:
        """PromptError for an empty prompt, a row without tokens, right padding, or too long a sequence."""
        if input_ids.ndim != 2 or input_ids.shape[1] == 0 or input_ids.shape[0] == 0:
            raise PromptError(f"the prompt is empty (token ids of shape {list(input_ids.shape)})")
        if attention_mask.shape != input_ids.shape:
            raise PromptError(
                f"attention_mask {list(attention_mask.shape)} and input_ids {list(input_ids.shape)} differ"
            )
        if not bool(attention_mask[:, -1].astype(bool).all()):
            raise PromptError("generation needs left padding: every row's last token must be valid")
        longest = int(attention_mask.astype(np.int64).sum(1).max()) + max_new_tokens
        if longest > self.record.max_positions:
            raise PromptError(
                f"the prompt ({int(attention_mask.sum(1).max())} tokens) plus {max_new_tokens} new tokens exceeds "
                f"the model's context of {self.record.max_positions} positions"
            )

    def prefill(self, input_ids: Any, attention_mask: Any = None, max_new_tokens: int = 0) -> np.ndarray:
        """Route the prompt once; returns each row's next-token logits [B, vocab] and sets `self.cache`."""
        ids = np.ascontiguousarray(np.asarray(input_ids, dtype=np.int64))
        mask = (
            np.ones_like(ids) if attention_mask is None else np.ascontiguousarray(np.asarray(attention_mask, np.int64))
        )
        self.check_prompt(ids, mask, max_new_tokens)
        binding = self.prefill_session.io_binding()
        binding.bind_cpu_input("input_ids", ids)
        binding.bind_cpu_input("attention_mask", mask)
        for name, placeholder in self._prefill_feed.items():
            binding.bind_cpu_input(name, placeholder)
        outputs = self._run(self.prefill_session, binding)
        positions = mask.sum(1).astype(np.int64)
        if self.record.inplace:
            self.cache = self._inplace_cache(outputs, positions, max_new_tokens)
        else:
            self.cache = OnnxCache(
                self.export_id, {name: outputs[name] for name in self._handed_over}, positions, self.record.num_layers
            )
        return outputs["logits"].numpy()[:, -1]

    def _inplace_cache(self, outputs: dict[str, ort.OrtValue], positions: np.ndarray, max_new_tokens: int) -> OnnxCache:
        """The prefill's per-layer slots copied into buffers with room for `max_new_tokens` more, once."""
        tensors: dict[str, ort.OrtValue] = {}
        lengths, filled = [], []
        for layer in range(self.record.num_layers):
            valid = outputs[present_name(layer, "valid")].numpy()
            count = valid.sum(1)
            if not np.array_equal(valid, np.arange(valid.shape[1])[None, :] < count[:, None]):
                # GroupQueryAttention reads each row's slots [0, count): they must come first.
                raise ArtifactError(f"the prefill graph's layer {layer} cache does not hold its valid slots first")
            lengths.append(count.astype(np.int32))
            filled.append(int(valid.shape[1]))
            for part in ("key", "value"):
                handed = outputs[present_name(layer, part)].numpy()
                batch, heads, slots, dim = handed.shape
                buffer = np.zeros((batch, heads, slots + max_new_tokens, dim), dtype=handed.dtype)
                buffer[:, :, :slots] = handed
                # The OrtValue wraps the numpy buffer (and holds it): ORT writes the new slots there.
                tensors[present_name(layer, part)] = ort.OrtValue.ortvalue_from_numpy(buffer)
        return OnnxCache(self.export_id, tensors, positions, self.record.num_layers, lengths, filled)

    def decode(self, token_ids: Any, cache: OnnxCache | None = None) -> np.ndarray:
        """One token per row ([B, 1]) through every layer; returns its next-token logits [B, vocab].

        Uses and advances `cache` if given (it becomes `self.cache`), else `self.cache`. An in-place
        cache full to its capacity is a CacheCapacityError, before anything is written.
        """
        cache = self._usable(cache)
        tokens = np.ascontiguousarray(np.asarray(token_ids, dtype=np.int64))
        if tokens.shape != (cache.batch, 1):
            raise PromptError(f"decode takes one token per row, shape [{cache.batch}, 1], got {list(tokens.shape)}")
        if int(cache.next_position.max()) >= self.record.max_positions:
            raise PromptError(f"the sequence reached the model's context of {self.record.max_positions} positions")
        binding = self.decode_session.io_binding()
        binding.bind_cpu_input("input_ids", tokens)
        binding.bind_cpu_input("position_ids", np.ascontiguousarray(cache.next_position[:, None]))
        for name, placeholder in self._decode_feed.items():
            binding.bind_cpu_input(name, placeholder)
        for past, present in zip(self._past, self._present, strict=True):
            binding.bind_ortvalue_input(past, cache.tensors[present])
        if cache.lengths is None:
            outputs = self._run(self.decode_session, binding)
            cache.tensors = {name: outputs[name] for name in self._present}
        else:
            _check_room(cache.lengths, cache.capacity())
            for layer, length in enumerate(cache.lengths):
                binding.bind_cpu_input(past_name(layer, "length"), length)
            binding.bind_output("logits", "cpu")
            for name in self._present:  # the same buffer as output: GroupQueryAttention writes in place
                binding.bind_ortvalue_output(name, cache.tensors[name])
            self.decode_session.run_with_iobinding(binding)
            outputs = {"logits": binding.get_outputs()[0]}
            cache.lengths = [length + 1 for length in cache.lengths]
            cache.filled = [filled + 1 for filled in cache.filled or ()]
        cache.next_position = cache.next_position + 1
        self.cache = cache
        return outputs["logits"].numpy()[:, -1]

    def kv_bytes(self) -> int:
        return self._usable(None).kv_bytes()

    def layer_lengths(self) -> list[int]:
        return self._usable(None).layer_lengths()

    def _usable(self, cache: OnnxCache | None) -> OnnxCache:
        cache = self.cache if cache is None else cache
        if cache is None:
            raise PromptError("no cache yet: run prefill first")
        if cache.export_id != self.export_id:
            raise CacheMismatchError(
                "the cache was made by another export (its graphs' sha256s differ); prefill again with this one"
            )
        return cache

    @staticmethod
    def _run(session: ort.InferenceSession, binding: Any) -> dict[str, ort.OrtValue]:
        names = [node.name for node in session.get_outputs()]
        for name in names:
            binding.bind_output(name, "cpu")
        session.run_with_iobinding(binding)
        return dict(zip(names, binding.get_outputs(), strict=True))

    # -- the loop -------------------------------------------------------------------------------

    def generate(
        self,
        input_ids: Any,
        attention_mask: Any = None,
        max_new_tokens: int = 32,
        eos_token_ids: Sequence[int] | None = None,
        do_sample: bool = False,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        on_token: TokenCallback | None = None,
    ) -> GeneratedTokens:
        """Greedy (or sampled) continuation of a left-padded batch, up to `max_new_tokens` per row.

        A row stops at one of `eos_token_ids` (default: the export's); the loop stops when every
        row has. `on_token(tokens [B], step)` sees each step's tokens as they come (streaming).
        """
        if max_new_tokens < 1:
            raise PromptError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        if do_sample and temperature <= 0:
            raise PromptError(f"temperature must be > 0 when sampling, got {temperature:g}")
        eos = np.asarray(self.record.eos_token_ids if eos_token_ids is None else list(eos_token_ids), np.int64)
        sampler = Sampler(do_sample, temperature, top_p, seed)
        logits = self.prefill(input_ids, attention_mask, max_new_tokens)
        finished = np.zeros(logits.shape[0], dtype=bool)
        generated: list[np.ndarray] = []
        for step in range(max_new_tokens):
            tokens = sampler.pick(logits)
            tokens = np.where(finished, self.record.pad_token_id, tokens)
            generated.append(tokens)
            if on_token is not None:
                on_token(tokens, step)
            finished |= np.isin(tokens, eos)
            if bool(finished.all()) or step == max_new_tokens - 1:
                break
            logits = self.decode(tokens[:, None])
        return GeneratedTokens(np.stack(generated, axis=1), finished, len(generated))


def _placeholders(session: ort.InferenceSession, decode: bool) -> dict[str, np.ndarray]:
    """A generator graph's branch flag and, for the inputs only the other branch reads, zeros (named dims 1)."""
    own = set(DECODE_INPUT_NAMES if decode else INPUT_NAMES)
    feed = {BRANCH_INPUT: np.array(decode)}
    for node in session.get_inputs():
        if node.name == BRANCH_INPUT or node.name in own or (decode and node.name.startswith("past.")):
            continue
        dims = [dim if isinstance(dim, int) else 1 for dim in node.shape]
        feed[node.name] = np.zeros(dims, dtype=_NUMPY_INPUT_TYPES[node.type])
    return feed


_NUMPY_INPUT_TYPES = {**_NUMPY_TYPES, "tensor(int64)": np.int64, "tensor(int32)": np.int32}


def _check_room(lengths: Sequence[np.ndarray], capacity: Sequence[int]) -> None:
    """CacheCapacityError where a layer's buffer has no slot left for a row's next entry."""
    for layer, (length, slots) in enumerate(zip(lengths, capacity, strict=True)):
        if int(length.max()) >= slots:
            raise CacheCapacityError(
                f"the cache is full (layer {layer} holds {slots} slots): it has room for the max_new_tokens "
                "given to prefill; prefill again with a larger max_new_tokens to generate more"
            )
