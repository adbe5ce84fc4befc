"""Validation collects every failure before it raises, and NaN never passes."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pytest
import torch

from ftp_deploy.errors import ExportValidationError
from ftp_deploy.exporters.graphs import RoutedGraph
from ftp_deploy.exporters.spec import ExportSpec
from ftp_deploy.exporters.validation import validate_export
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import VOCAB, tiny_model

SPEC = ExportSpec((300, 500), debug_outputs=True)


class EagerRunner:
    """Stands in for an ONNX Runtime runner: the module's own outputs, then `damage` applied to them."""

    def __init__(self, module: torch.nn.Module, damage) -> None:
        self.module, self.damage = module, damage

    def infer(self, feed: dict[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        with torch.no_grad():
            outputs = self.module(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"]))
        result = OrderedDict((name, t.numpy().copy()) for name, t in zip(SPEC.output_names, outputs, strict=True))
        self.damage(result)
        return result


@pytest.fixture(scope="module")
def module() -> RoutedGraph:
    routed = RoutedModel(tiny_model(num_layers=2), Schedule(SPEC.thousandths), RouterSpec(kind="static"))
    return RoutedGraph(routed, SPEC).eval()


def test_faithful_outputs_pass(module: RoutedGraph) -> None:
    report = validate_export(EagerRunner(module, lambda out: None), module, SPEC, VOCAB)
    assert report.logits_max_abs_diff == 0.0 and report.routing_agreement == 1.0 and report.failures == []


def test_every_failure_is_reported_at_once(module: RoutedGraph) -> None:
    def damage(out: OrderedDict[str, np.ndarray]) -> None:
        out["logits"] += 0.01
        out["indices_1"][:, 1] = out["indices_1"][:, 0]  # one block keeps another token
        out["hidden_0"][:, -1] *= 2

    with pytest.raises(ExportValidationError) as caught:
        validate_export(EagerRunner(module, damage), module, SPEC, VOCAB)
    failures = caught.value.failures
    lengths = SPEC.validation_lengths
    assert [f for f in failures if f.startswith("logits")] == [
        f"logits at length {n}: max |diff| 0.01 > 0.001" for n in lengths
    ]
    assert sum(f.startswith("hidden_0") for f in failures) == len(lengths)
    assert any(f.startswith("routing decisions agree on") for f in failures)


def test_nan_fails(module: RoutedGraph) -> None:
    def damage(out: OrderedDict[str, np.ndarray]) -> None:
        out["logits"][0, -1, 0] = np.nan

    with pytest.raises(ExportValidationError, match=r"logits at length 24: max \|diff\| nan"):
        validate_export(EagerRunner(module, damage), module, SPEC, VOCAB)


def test_missing_outputs_fail(module: RoutedGraph) -> None:
    with pytest.raises(ExportValidationError, match="the graph outputs"):
        validate_export(EagerRunner(module, lambda out: out.pop("hidden_1")), module, SPEC, VOCAB)


def _shift_hidden(times_tolerance: float, every_element: bool):
    """Adds `times_tolerance` * (atol + rtol * the token's max |value|) to hidden_0."""

    def damage(out: OrderedDict[str, np.ndarray]) -> None:
        hidden = out["hidden_0"]
        scale = np.abs(hidden).max(-1, keepdims=True)
        shift = times_tolerance * (SPEC.hidden_atol + SPEC.hidden_rtol * scale)
        if every_element:
            hidden += shift
        else:
            hidden[..., :1] += shift

    return damage


def test_hidden_error_within_each_tokens_scale_passes(module: RoutedGraph) -> None:
    # Elements near 0 get an error far above rtol * |element|: fp32 rounding follows the token's scale.
    validate_export(EagerRunner(module, _shift_hidden(0.5, every_element=True)), module, SPEC, VOCAB)


def test_hidden_error_beyond_a_tokens_scale_fails(module: RoutedGraph) -> None:
    with pytest.raises(ExportValidationError, match=r"hidden_0 at length 24: .* max \|expected\| of its token"):
        validate_export(EagerRunner(module, _shift_hidden(2.0, every_element=False)), module, SPEC, VOCAB)
