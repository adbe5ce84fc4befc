"""Validation of an exported file against the PyTorch module it was exported from.

Runs the spec's validation inputs (batch 2, one row left-padded, two sequence lengths) through
both, compares every output the spec declares within the spec's tolerance, and raises one
ExportValidationError listing every failure. Padding positions are left out: what a runtime
computes for them is not part of the model.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from ftp_deploy.engines.onnx_runtime import OrtRunner
from ftp_deploy.errors import ExportValidationError
from ftp_deploy.exporters.spec import ExportSpec, indices_name
from ftp_deploy.routing import Selection


@dataclass
class ValidationReport:
    """The largest differences seen, over every validation input."""

    lengths: tuple[int, ...]
    batch: int
    widened_to_fp32: bool
    logits_max_abs_diff: float = 0.0
    routing_agreement: float | None = None
    hidden_max_abs_diff: float | None = None
    failures: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {key: value for key, value in asdict(self).items() if key != "failures"}


@dataclass
class _Routing:
    agreeing: int = 0
    total: int = 0


def validate_export(
    runner: OrtRunner, module: nn.Module, spec: ExportSpec, vocab_size: int, widened: bool = False
) -> ValidationReport:
    """Compare the active `runner` with `module` on the spec's inputs; raise after every check ran."""
    report = ValidationReport(spec.validation_lengths, spec.validation_batch, widened)
    routing = _Routing()
    for input_ids, attention_mask in spec.validation_inputs(vocab_size):
        with torch.no_grad():
            expected = dict(zip(spec.output_names, module(input_ids, attention_mask), strict=True))
        actual = runner.infer({"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        _compare(report, routing, spec, attention_mask, expected, actual)
    if routing.total:
        report.routing_agreement = routing.agreeing / routing.total
        if report.routing_agreement < spec.min_routing_agreement:
            report.failures.append(
                f"routing decisions agree on {report.routing_agreement:.4%} of (token, block) pairs, "
                f"below {spec.min_routing_agreement:.1%}"
            )
    if report.failures:
        raise ExportValidationError(report.failures)
    return report


def _compare(
    report: ValidationReport,
    routing: _Routing,
    spec: ExportSpec,
    mask: torch.Tensor,
    expected: Mapping[str, torch.Tensor],
    actual: Mapping[str, np.ndarray],
) -> None:
    length = mask.shape[1]
    if set(actual) != set(expected):
        report.failures.append(f"at length {length} the graph outputs {sorted(actual)}, not {sorted(expected)}")
        return
    routing_outputs = {indices_name(block) for block in range(spec.num_layers)}
    for name, want in expected.items():
        got = torch.from_numpy(np.asarray(actual[name]))
        if tuple(got.shape) != tuple(want.shape):
            report.failures.append(f"{name} at length {length}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
            continue
        if name == "logits":
            # The positions the logits cover: every position, or the last only.
            rows = mask[:, -want.shape[1] :].bool()
            diff = float((got.float() - want.float())[rows].abs().max())
            report.logits_max_abs_diff = max(report.logits_max_abs_diff, diff)
            if not diff <= spec.logits_atol:  # NaN fails too
                report.failures.append(f"logits at length {length}: max |diff| {diff:.3g} > {spec.logits_atol:g}")
        elif name in routing_outputs:
            kept_got, kept_want = (Selection(i).keep_mask(length) for i in (got, want))
            valid = mask.bool()
            routing.agreeing += int((kept_got == kept_want)[valid].sum())
            routing.total += int(valid.sum())
        else:
            _compare_hidden(report, spec, name, length, got, want, mask.bool())


def _compare_hidden(
    report: ValidationReport,
    spec: ExportSpec,
    name: str,
    length: int,
    got: torch.Tensor,
    want: torch.Tensor,
    valid: torch.Tensor,
) -> None:
    got, want = got.float()[valid], want.float()[valid]  # [tokens, hidden]
    diff = (got - want).abs()
    report.hidden_max_abs_diff = max(report.hidden_max_abs_diff or 0.0, float(diff.max()))
    if not bool((diff <= spec.hidden_atol + spec.hidden_rtol * token_scale(want)).all()):
        report.failures.append(
            f"{name} at length {length}: max |diff| {float(diff.max()):.3g} exceeds "
            f"{spec.hidden_atol:g} + {spec.hidden_rtol:g} * max |expected| of its token"
        )


def token_scale(hidden: torch.Tensor) -> torch.Tensor:
    """Each token's largest |value| (last axis), the scale its float rounding error follows.

    A block's output is a sum over the residual stream, so its error tracks the whole vector's
    size, not each element's: SmolLM2's deep blocks carry activations up to 2.4e4, and two exact
    PyTorch paths (compact vs masked, fp32) differ there by 0.036 on elements near 0, which an
    element-wise relative tolerance rejects.
    """
    return hidden.abs().amax(dim=-1, keepdim=True)
