"""Validation of an exported file against the PyTorch module it was exported from.

Runs the spec's validation inputs (batch 2, one row left-padded, two sequence lengths) through
both and compares them with the comparison `ftp-deploy verify` makes (verification/parity.py),
within the same tolerance definition: the logits, every hidden state the spec declares, and the
routing decisions. Raises one ExportValidationError listing every failure.
"""

from __future__ import annotations

from polygraphy.backend.base import BaseRunner
from torch import nn

from ftp_deploy.errors import ExportValidationError
from ftp_deploy.export_format import ValidationRecord
from ftp_deploy.exporters.spec import ExportSpec
from ftp_deploy.verification.inputs import Feed
from ftp_deploy.verification.parity import check_parity
from ftp_deploy.verification.runners import ModuleRunner


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
