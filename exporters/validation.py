"""Validation of an exported file against the PyTorch module it was exported from.

Runs the spec's validation inputs (batch 2, one row left-padded, two sequence lengths) through
both and compares them with the comparison `ftp-deploy verify` makes (verification/parity.py),
within the same tolerance definition: the logits, every hidden state the spec declares, and the
routing decisions. Raises one ExportValidationError listing every failure.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from polygraphy.backend.base import BaseRunner
from torch import nn

from ftp_deploy.comparison.decode import OnnxDecoder, check_decode
from ftp_deploy.comparison.feeds import Feed
from ftp_deploy.comparison.parity import check_parity
from ftp_deploy.engines.torch_runner import ModuleRunner
from ftp_deploy.engines.widen import fp32_copy
from ftp_deploy.errors import ExportValidationError
from ftp_deploy.exporters.spec import ExportSpec
from ftp_deploy.formats.export_manifest import (
    DECODER_FILE,
    GENERATOR_FILE,
    MODEL_FILE,
    ValidationRecord,
    WithPastRecord,
)
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


# Decode steps the decode graph is checked over, after the prefill.
DECODE_STEPS = 3


def validate_decode(
    folder: Path,
    record: WithPastRecord,
    routed: RoutedModel,
    spec: ExportSpec,
    vocab_size: int,
    validation: ValidationRecord,
    quantized: bool = False,
) -> ValidationRecord:
    """Prefill and decode graphs in ONNX Runtime against PyTorch, with verify's decode check (an in-place
    export's generator graph as well: the worst of the two is recorded).

    On the first validation input (batch 2, one row left-padded); a dense export's reference is the
    routed forward at sparsity 0 (every token kept in every block). The graphs run with fp32 arithmetic
    (engines/widen.fp32_copy: an fp16/bf16 file widened, a `quantized` one's MatMulNBits at level 0)
    against `routed` holding the file's weights (rounded, or dequantized) in fp32.
    """
    from ftp_deploy.engines.onnx_generation import OnnxGenerator

    reference_model = routed
    if spec.dense:
        reference_model = RoutedModel(routed.base, Schedule.from_sparsities([0.0] * spec.num_layers))
        reference_model.ops = routed.ops
    ids, mask = spec.validation_inputs(vocab_size)[0]
    # In fp32 arithmetic, as the prefill graph is validated: `routed` holds the file's rounded weights in fp32.
    prefill, decode = (fp32_copy(folder / name, spec.dtype, quantized) for name in (MODEL_FILE, DECODER_FILE))
    generators = [OnnxGenerator.from_files(prefill, decode, record, export_id="validation")]
    if record.inplace:  # the generator graph too (exporters/merge.py): what generation runs
        merged = fp32_copy(folder / GENERATOR_FILE, spec.dtype, quantized)
        generators.append(OnnxGenerator.from_generator_file(merged, record, "validation", None, prepacking=quantized))
    worst = 0.0
    for generator in generators:
        report = check_decode(
            reference_model, OnnxDecoder(generator), ids, mask, DECODE_STEPS, spec.tolerance, same_tokens=False
        )
        if report.failures:
            raise ExportValidationError(report.failures)
        worst = max(worst, report.logits_max_abs_diff)
    return replace(validation, decode_logits_max_abs_diff=worst, decode_steps=DECODE_STEPS)
