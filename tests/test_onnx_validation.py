"""Validation runs verify's comparison, collects every failure before it raises, and NaN never passes."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import numpy as np
import pytest

from ftp_deploy.engines.torch_runner import ModuleRunner
from ftp_deploy.errors import ExportValidationError
from ftp_deploy.exporters.graphs import RoutedGraph
from ftp_deploy.exporters.spec import ExportSpec
from ftp_deploy.exporters.validation import validate_export
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import VOCAB, tiny_model

SPEC = ExportSpec(thousandths=(300, 500), debug_outputs=True)
TOL = SPEC.tolerance


class DamagedRunner(ModuleRunner):
    """Stands in for an ONNX Runtime runner: the module's own outputs, then `damage` applied to them."""

    def __init__(self, module: RoutedGraph, damage) -> None:
        super().__init__(module, SPEC.output_names, name="candidate")
        self.damage = damage

    def infer_impl(self, feed_dict: dict[str, Any]) -> OrderedDict[str, np.ndarray]:
        result = OrderedDict((name, array.copy()) for name, array in super().infer_impl(feed_dict).items())
        self.damage(result)
        return result


@pytest.fixture(scope="module")
def module() -> RoutedGraph:
    routed = RoutedModel(tiny_model(num_layers=2), Schedule(SPEC.thousandths), RouterSpec(kind="static"))
    return RoutedGraph(routed, SPEC).eval()


@pytest.fixture(scope="module")
def llm_scaled_module() -> RoutedGraph:
    """Logits of a real LLM's size (tens; a random tiny model's are about 0.1), so a token's scale exceeds 1."""
    routed = RoutedModel(tiny_model(num_layers=2), Schedule(SPEC.thousandths), RouterSpec(kind="static"))
    routed.base.lm_head.weight.data *= 300
    return RoutedGraph(routed, SPEC).eval()


def test_faithful_outputs_pass(module: RoutedGraph) -> None:
    record = validate_export(DamagedRunner(module, lambda out: None), module, SPEC, VOCAB)
    assert record.logits_max_abs_diff == 0.0 and record.routing_agreement == 1.0
    assert record.hidden_max_abs_diff == 0.0 and record.lengths == SPEC.validation_lengths


def test_every_failure_is_reported_at_once(module: RoutedGraph) -> None:
    def damage(out: OrderedDict[str, np.ndarray]) -> None:
        out["logits"] += 0.5
        out["indices_1"][:, 1] = out["indices_1"][:, 0]  # one block keeps another token
        out["hidden_0"][:, -1] *= 2

    with pytest.raises(ExportValidationError) as caught:
        validate_export(DamagedRunner(module, damage), module, SPEC, VOCAB)
    failures = caught.value.failures
    limits = f"atol {TOL.atol:g} and rtol {TOL.rtol:g}"
    per_token = f"atol {TOL.atol:g} x the token's largest |logit| and rtol {TOL.rtol:g}"
    assert [f for f in failures if f.startswith("logits")] == [f"logits: max |diff| 0.5, beyond {per_token}"]
    assert [f for f in failures if f.startswith("hidden_0")] == [
        f"hidden_0: max |diff| 1 (in units of each token's largest |value|), beyond {limits}"
    ]
    assert any(f.startswith("routing decisions agree on") for f in failures)


def test_nan_fails(module: RoutedGraph) -> None:
    def damage(out: OrderedDict[str, np.ndarray]) -> None:
        out["logits"][0, -1, 0] = np.nan

    with pytest.raises(ExportValidationError, match=r"logits: max \|diff\| nan"):
        validate_export(DamagedRunner(module, damage), module, SPEC, VOCAB)


def test_missing_and_misshapen_outputs_fail(module: RoutedGraph) -> None:
    with pytest.raises(ExportValidationError, match=r"at length 24 candidate outputs .*, not "):
        validate_export(DamagedRunner(module, lambda out: out.pop("hidden_1")), module, SPEC, VOCAB)

    def truncate(out: OrderedDict[str, np.ndarray]) -> None:
        out["hidden_1"] = out["hidden_1"][:, :-1]

    with pytest.raises(ExportValidationError, match=r"hidden_1 at length 24: shape \(2, 23, \d+\), expected"):
        validate_export(DamagedRunner(module, truncate), module, SPEC, VOCAB)


def _shift(name: str, times_tolerance: float, every_element: bool):
    """Adds `times_tolerance` * atol * the token's max |value| to output `name`."""

    def damage(out: OrderedDict[str, np.ndarray]) -> None:
        values = out[name]
        shift = times_tolerance * TOL.atol * np.abs(values).max(-1, keepdims=True)
        if every_element:
            values += shift
        else:
            values[..., :1] += shift

    return damage


@pytest.mark.parametrize("name", ["hidden_0", "logits"])
def test_error_within_each_tokens_scale_passes(llm_scaled_module: RoutedGraph, name: str) -> None:
    # Elements near 0 get an error far above atol and rtol * |element|: fp32 rounding follows the
    # token's scale (for logits: SmolLM2's massive activations, parity.token_scale).
    module = llm_scaled_module
    logits = module(*SPEC.validation_inputs(VOCAB)[0])[0].detach()
    assert float(logits[0].abs().amax(-1).median()) > 2  # row 0 is unpadded
    validate_export(DamagedRunner(module, _shift(name, 0.5, every_element=True)), module, SPEC, VOCAB)


@pytest.mark.parametrize("name", ["hidden_0", "logits"])
def test_error_beyond_a_tokens_scale_fails(llm_scaled_module: RoutedGraph, name: str) -> None:
    module = llm_scaled_module
    with pytest.raises(ExportValidationError, match=rf"{name}: max \|diff\| .*beyond atol"):
        validate_export(DamagedRunner(module, _shift(name, 2.0, every_element=False)), module, SPEC, VOCAB)
