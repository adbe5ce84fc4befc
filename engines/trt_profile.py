"""The TensorRT optimization profile of an exported model: the (batch, sequence) range it is built for.

Both inputs, `input_ids` and `attention_mask`, are [batch, sequence] and share one range (an input
with more axes keeps the rest static). Pure Python: parsing, validation and the shape check run
without TensorRT.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ftp_deploy.errors import ShapeOutOfProfileError, UsageError
from ftp_deploy.formats.export_manifest import DECODE_INPUT_NAMES, INPUT_NAMES, WithPastRecord, past_name
from ftp_deploy.formats.plan_manifest import ProfileRecord
from ftp_deploy.plugins.token_compaction.contract import kept_count

Shape = tuple[int, int]  # (batch, sequence)
AXES = ("batch", "sequence")


def parse_shape(text: str, option: str) -> Shape:
    """`"B,T"` as (B, T); a UsageError naming `option` and the text otherwise."""
    parts = [part.strip() for part in text.split(",")]
    try:
        batch, seq_len = (int(part) for part in parts)
    except ValueError as err:
        raise UsageError(f"{option} takes BATCH,SEQUENCE (two integers, e.g. 1,512), got {text!r}") from err
    return batch, seq_len


def format_shape(shape: Sequence[int], sep: str = ",") -> str:
    return sep.join(str(dim) for dim in shape)


@dataclass(frozen=True)
class ShapeProfile:
    """min <= opt <= max per axis, each at least 1; TensorRT tunes its kernels for `opt_shape`.

    The defaults are the export command's: one sequence at a time up to four, 512 tokens tuned,
    2048 at most.
    """

    min_shape: Shape = (1, 1)
    opt_shape: Shape = (1, 512)
    max_shape: Shape = (4, 2048)

    def __post_init__(self) -> None:
        named = {"--min-shape": self.min_shape, "--opt-shape": self.opt_shape, "--max-shape": self.max_shape}
        for option, shape in named.items():
            if len(shape) != len(AXES) or any(not isinstance(dim, int) or dim < 1 for dim in shape):
                raise UsageError(f"{option} must be two integers >= 1 (batch, sequence), got {shape!r}")
        for axis, name in enumerate(AXES):
            low, opt, high = self.min_shape[axis], self.opt_shape[axis], self.max_shape[axis]
            if not low <= opt <= high:
                raise UsageError(
                    f"the {name} range must satisfy min <= opt <= max, got min {low}, opt {opt}, max {high} "
                    f"(--min-shape {format_shape(self.min_shape)}, --opt-shape {format_shape(self.opt_shape)}, "
                    f"--max-shape {format_shape(self.max_shape)})"
                )

    def record(self) -> ProfileRecord:
        return ProfileRecord(INPUT_NAMES, self.min_shape, self.opt_shape, self.max_shape)

    @classmethod
    def from_record(cls, record: ProfileRecord) -> ShapeProfile:
        return cls(record.min, record.opt, record.max)

    def range_text(self) -> str:
        return ", ".join(f"{name} {self.min_shape[axis]}..{self.max_shape[axis]}" for axis, name in enumerate(AXES))


DEFAULT_PROFILE = ShapeProfile()


def decode_profile(profile: ShapeProfile, thousandths: Sequence[int], record: WithPastRecord) -> dict[str, Any]:
    """The decode graph's optimization profile: {input: {"min", "opt", "max": shape}} for every input.

    The profile's sequence range bounds prompt plus generated tokens. Layer l's past holds K_l of the
    prompt's tokens plus the generated ones, so its length runs from 1 (a one-token prompt) to
    max - 1 (the last token's step at sparsity 0; any layer whose prompt tokens were pruned holds
    fewer); it is tuned for K_l of the opt prompt length, the length a routed layer really has there.
    """
    # A decode step's own sequence is one token: the prompt's lower bound does not apply.
    batches = {"min": profile.min_shape[0], "opt": profile.opt_shape[0], "max": profile.max_shape[0]}
    seq_opt, seq_max = profile.opt_shape[1], profile.max_shape[1]
    shapes: dict[str, Any] = {name: {key: [batch, 1] for key, batch in batches.items()} for name in DECODE_INPUT_NAMES}
    past_max = max(seq_max - 1, 1)
    for layer, num in enumerate(thousandths):
        past_opt = min(max(kept_count(seq_opt, num), 1), past_max)
        lengths = {"min": 1, "opt": past_opt, "max": past_max}
        for part in ("key", "value"):
            shapes[past_name(layer, part)] = {
                key: [batches[key], record.kv_heads, lengths[key], record.head_dim] for key in lengths
            }
        shapes[past_name(layer, "valid")] = {key: [batches[key], lengths[key]] for key in lengths}
    return {"inputs": shapes}


def check_shapes_in_profile(shapes: Mapping[str, Sequence[int]], profile: ShapeProfile) -> None:
    """Refuse, before TensorRT sees them, inputs whose leading [batch, sequence] the engine was not built for.

    TensorRT's own refusal (set_input_shape returning False) names neither the range nor the fix.
    """
    for name, shape in shapes.items():
        dims = tuple(int(dim) for dim in shape)
        inside = len(dims) >= len(AXES) and all(
            profile.min_shape[axis] <= dims[axis] <= profile.max_shape[axis] for axis in range(len(AXES))
        )
        if not inside:
            raise ShapeOutOfProfileError(
                f"{name} has shape {format_shape(dims, 'x')}, outside the engine's optimization profile "
                f"([batch, sequence] with {profile.range_text()}): rebuild the engine with a wider "
                "--min-shape/--max-shape, or split the input"
            )
