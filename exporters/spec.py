"""What one ONNX export produces, declared once (in the style of Optimum's OnnxConfig).

The same `ExportSpec` names the graph's inputs and outputs and their dynamic axes for
torch.onnx.export, writes them into the manifest, and tells validation which outputs to compare
and within what tolerance (verify's, for fp32).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ftp_deploy.errors import UnsupportedExportError
from ftp_deploy.exporters.options import ATTENTION_FORMS, SUPPORTED_OPSETS, GraphOptions
from ftp_deploy.formats.export_manifest import (
    CACHE_PARTS,
    CONCAT_CACHE,
    DECODE_INPUT_NAMES,
    INPLACE_CACHE,
    INPLACE_PARTS,
    INPUT_NAMES,
    cache_names,
    hidden_name,
    indices_name,
    past_name,
    present_name,
)
from ftp_deploy.formats.verify_report import Tolerance
from ftp_deploy.placement import DTYPE_NAMES
from ftp_deploy.plugins.token_compaction.contract import SPARSITY_DEN

BATCH, SEQUENCE = "batch", "sequence"


def kept_axis_name(sparsity_num: int) -> str:
    """The symbolic length of a block's kept tokens, as the shape arithmetic computes it."""
    return f"{SEQUENCE} - ({SEQUENCE} * {sparsity_num}) // {SPARSITY_DEN}"


def past_axis_name(layer: int) -> str:
    """The decode graph's cache length of layer `layer`: each layer has its own (K_l + generated so far)."""
    return f"past_sequence_{layer}"


def capacity_axis_name(layer: int) -> str:
    """An in-place decode graph's buffer length of layer `layer`: K_l plus room for the tokens to generate."""
    return f"capacity_{layer}"


def cache_axes(name: str, batch: str, length: str) -> dict[int, str]:
    """Named axes of a cache tensor (or part): key/value [B, kv_heads, length, head_dim], valid [B, length],
    an in-place cache's per-row count [B]."""
    if name.endswith("length"):
        return {0: batch}
    return {0: batch, 1: length} if name.endswith("valid") else {0: batch, 2: length}


@dataclass(frozen=True)
class ExportSpec(GraphOptions):
    """One export: the routed graph (per-block sparsity in thousandths) or the dense baseline.

    `hidden_{l}` (debug outputs) is the hidden state leaving block l, `indices_{l}` the positions
    block l kept. Validation compares in fp32 (other dtypes through an fp32 copy), so within fp32's tolerance.
    """

    thousandths: tuple[int, ...] = field(kw_only=True)
    # The prefill's attention as written, resolved from the options' engine default.
    attention: str = "fused"
    validation_batch: int = 2
    # Kept counts below and above the router's default attention window (32 queries).
    validation_lengths: tuple[int, ...] = (24, 61)
    # torch.export specializes a dimension whose example size is 1 to a constant 1: batch 2, and
    # 16 tokens, at which the block's sentinel numerator keeps K = 7 (exporters/pieces.py).
    example_shape: tuple[int, int] = (2, 16)

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise UnsupportedExportError(f"dtype {self.dtype!r} cannot be exported; choose one of {DTYPE_NAMES}")
        if self.opset not in SUPPORTED_OPSETS:
            raise UnsupportedExportError(
                f"opset {self.opset} is not supported; choose one of {', '.join(map(str, SUPPORTED_OPSETS))}"
            )
        if self.attention not in ATTENTION_FORMS:
            raise UnsupportedExportError(
                f"attention form {self.attention!r} is unknown; choose one of {', '.join(ATTENTION_FORMS)}"
            )
        if self.dense and self.debug_outputs:
            raise UnsupportedExportError("--debug-outputs exposes routing decisions; the dense model has none")
        if self.with_past and not self.last_token_logits:
            # Generation reads only the next token's logits; all T positions would cost T x vocab floats.
            raise UnsupportedExportError("--with-past exports the prefill with last-token logits")

    @property
    def tolerance(self) -> Tolerance:
        return Tolerance.for_dtype("fp32")

    @property
    def decode_cache(self) -> str:
        """The decode graph's cache form: in place through GroupQueryAttention where the prefill's attention is
        fused (ONNX Runtime's contrib op in both graphs), concatenated in standard ops otherwise (TensorRT's)."""
        return INPLACE_CACHE if self.attention == "fused" else CONCAT_CACHE

    @property
    def num_layers(self) -> int:
        return len(self.thousandths)

    @property
    def input_names(self) -> tuple[str, ...]:
        return INPUT_NAMES

    @property
    def output_names(self) -> tuple[str, ...]:
        present = cache_names(self.num_layers, present_name) if self.with_past else ()
        if not self.debug_outputs:
            return ("logits", *present)
        blocks = range(self.num_layers)
        return ("logits", *present, *map(indices_name, blocks), *map(hidden_name, blocks))

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes = {name: {0: BATCH, 1: SEQUENCE} for name in self.input_names}
        axes["logits"] = {0: BATCH} if self.last_token_logits else {0: BATCH, 1: SEQUENCE}
        if self.debug_outputs:
            for block, num in enumerate(self.thousandths):
                axes[indices_name(block)] = {0: BATCH, 1: kept_axis_name(num)}
                axes[hidden_name(block)] = {0: BATCH, 1: SEQUENCE}
        if self.with_past:
            for block, num in enumerate(self.thousandths):
                length = SEQUENCE if self.dense else kept_axis_name(num)
                for name in cache_names(self.num_layers, present_name)[3 * block : 3 * block + 3]:
                    axes[name] = cache_axes(name, BATCH, length)
        return axes

    def example_inputs(self, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        return sample_inputs(*self.example_shape, vocab_size, seed=0)

    def validation_inputs(self, vocab_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [
            sample_inputs(self.validation_batch, length, vocab_size, seed=i)
            for i, length in enumerate(self.validation_lengths)
        ]

    def to_json(self) -> dict[str, Any]:
        axes = {name: {str(axis): label for axis, label in named.items()} for name, named in self.dynamic_axes.items()}
        return {
            "inputs": {name: axes[name] for name in self.input_names},
            "outputs": {name: axes[name] for name in self.output_names},
            "tolerance": asdict(self.tolerance),
        }


@dataclass(frozen=True)
class DecodeSpec:
    """The decode graph of a with-past export: one new token per row and every layer's cache in, its
    next-token logits and every layer's cache out. Positions are explicit inputs: a compacted cache's
    slot count says nothing about a token's position.

    `cache` is the form (formats/export_manifest.py): "concat" returns each cache one slot longer;
    "inplace" takes capacity-sized buffers and each row's cached count, and writes the new slot in place.
    """

    num_layers: int
    cache: str = CONCAT_CACHE
    # Past lengths 5 (not 0 or 1, which torch.export would specialize) at batch 2.
    example_batch: int = 2
    example_past: int = 5

    @property
    def inplace(self) -> bool:
        return self.cache == INPLACE_CACHE

    @property
    def past_parts(self) -> tuple[str, ...]:
        return INPLACE_PARTS if self.inplace else CACHE_PARTS

    @property
    def present_parts(self) -> tuple[str, ...]:
        return INPLACE_PARTS[:2] if self.inplace else CACHE_PARTS

    @property
    def input_names(self) -> tuple[str, ...]:
        return (*DECODE_INPUT_NAMES, *cache_names(self.num_layers, past_name, self.past_parts))

    @property
    def output_names(self) -> tuple[str, ...]:
        return ("logits", *cache_names(self.num_layers, present_name, self.present_parts))

    @property
    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        axes: dict[str, dict[int, str]] = {name: {0: BATCH} for name in (*DECODE_INPUT_NAMES, "logits")}
        for layer in range(self.num_layers):
            length = (capacity_axis_name if self.inplace else past_axis_name)(layer)
            grown = length if self.inplace else f"{length} + 1"
            for part in self.past_parts:
                axes[past_name(layer, part)] = cache_axes(part, BATCH, length)
            for part in self.present_parts:
                axes[present_name(layer, part)] = cache_axes(part, BATCH, grown)
        return axes

    def to_json(self) -> dict[str, Any]:
        axes = {name: {str(axis): label for axis, label in named.items()} for name, named in self.dynamic_axes.items()}
        return {
            "inputs": {name: axes[name] for name in self.input_names},
            "outputs": {name: axes[name] for name in self.output_names},
        }


def sample_inputs(batch: int, length: int, vocab_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random token ids and a mask whose second row is left-padded by a third (the padded-mask path)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, vocab_size, (batch, length), generator=generator)
    mask = torch.ones(batch, length, dtype=torch.long)
    if batch > 1:
        mask[1, : length // 3] = 0
    return ids, mask
