"""Validation of an exported file against the PyTorch module it was exported from.

Runs the spec's validation inputs (batch 2, one row left-padded, two sequence lengths) through
both and compares them with the comparison `ftp-deploy verify` makes (verification/parity.py),
within the same tolerance definition: the logits, every hidden state the spec declares, and the
routing decisions. Raises one ExportValidationError listing every failure.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from polygraphy.backend.base import BaseRunner
from torch import nn

from ftp_deploy.cached_generation import greedy_trace
from ftp_deploy.comparison.feeds import Feed
from ftp_deploy.comparison.parity import allows, check_parity
from ftp_deploy.engines.torch_runner import ModuleRunner
from ftp_deploy.errors import ExportValidationError
from ftp_deploy.exporters.spec import ExportSpec
from ftp_deploy.formats.export_manifest import DECODER_FILE, MODEL_FILE, ValidationRecord, WithPastRecord
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.schedule import Schedule


def validate_export(
    runner: BaseRunner, module: nn.Module, spec: ExportSpec, vocab_size: int, widened: bool = False
) -> ValidationRecord:
    """Compare `runner` with `module` on the spec's inputs; raise after every check ran."""
    feeds = [
        Feed(input_ids=ids.numpy(), attention_mask=mask.numpy()) for ids, mask in spec.validation_inputs(vocab_size)
    ]
    reference = ModuleRunner(module, spec.output_names, name="pytorch")
    parity, _ = check_parity(reference, runner, feeds, spec.tolerance)
    failures = parity.failures(include_hidden=True)
    if failures:
        raise ExportValidationError(failures)
    return ValidationRecord(
        lengths=spec.validation_lengths,
        batch=spec.validation_batch,
        widened_to_fp32=widened,
        logits_max_abs_diff=parity.max_abs_diff("logits") or 0.0,
        routing_agreement=parity.routing_agreement,
        hidden_max_abs_diff=parity.hidden_max_abs_diff,
    )


# Greedy steps the decode graph is checked over: the prefill's token and three decode steps.
DECODE_STEPS = 4


def validate_decode(
    folder: Path,
    record: WithPastRecord,
    routed: RoutedModel,
    spec: ExportSpec,
    vocab_size: int,
    validation: ValidationRecord,
) -> ValidationRecord:
    """Prefill and decode graphs in ONNX Runtime against PyTorch's routed prefill and cached decode.

    Both are driven by PyTorch's greedy tokens (a near tie cannot make them diverge), on the first
    validation input (batch 2, one row left-padded); every step's logits must be within the spec's
    tolerance and every layer's cache as long as PyTorch's. A dense export's reference is the same
    code at sparsity 0 (every token kept in every block).
    """
    from ftp_deploy.engines.onnx_generation import OnnxGenerator

    reference_model = routed
    if spec.dense:
        reference_model = RoutedModel(routed.base, Schedule.from_sparsities([0.0] * spec.num_layers))
        reference_model.ops = routed.ops
    ids, mask = spec.validation_inputs(vocab_size)[0]
    trace = greedy_trace(reference_model, ids, mask, DECODE_STEPS)
    generator = OnnxGenerator.from_files(folder / MODEL_FILE, folder / DECODER_FILE, record, export_id="validation")
    tolerance = spec.tolerance
    failures, worst = [], 0.0
    for step, reference in enumerate(trace.logits):
        got = (
            generator.prefill(ids.numpy(), mask.numpy())
            if step == 0
            else generator.decode(trace.tokens[:, step - 1 : step].numpy())
        )
        want = reference.numpy()
        diff = float(np.abs(got - want).max())
        worst = max(worst, diff)
        if not allows(tolerance, got, want):
            failures.append(f"decode step {step}: logits max |diff| {diff:.3g}, beyond atol {tolerance.atol:g}")
    if generator.layer_lengths() != trace.cache.layer_lengths():
        failures.append(f"cache lengths {generator.layer_lengths()}, PyTorch's {trace.cache.layer_lengths()}")
    if failures:
        raise ExportValidationError(failures)
    return replace(validation, decode_logits_max_abs_diff=worst, decode_steps=DECODE_STEPS)
