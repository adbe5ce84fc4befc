"""The formats layer: one serde for every record, and the documents written before it still read.

`tests/data/legacy-2026-12-02/` holds what `make demo` wrote with the code before the formats
layer existed (its README says which commit).
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ftp_deploy.artifacts import load_artifact
from ftp_deploy.errors import ArtifactError
from ftp_deploy.formats.eval_results import RESULTS_FILE, EvalResults
from ftp_deploy.formats.export_manifest import ExportManifest, read_manifest
from ftp_deploy.formats.record import from_json, to_json
from ftp_deploy.formats.routed_config import CONFIG_FILE
from ftp_deploy.formats.verify_report import VerifyReport
from ftp_deploy.training.runfolder import RunFolder

LEGACY = Path(__file__).parent / "data" / "legacy-2026-12-02"


@dataclass(frozen=True)
class Inner:
    name: str
    weight: float = 1.0


@dataclass(frozen=True)
class Outer:
    inner: Inner
    sizes: tuple[int, ...]
    pairs: list[tuple[int, float]]
    by_name: dict[str, Inner]
    maybe: Inner | None = None
    numbers: list[float] = field(default_factory=list)


def test_records_round_trip_through_json() -> None:
    record = Outer(Inner("a", 0.5), (1, 2), [(3, 0.25)], {"b": Inner("b")}, None, [1.0, 2.5])
    data = json.loads(json.dumps(to_json(record)))
    assert data["inner"] == {"name": "a", "weight": 0.5} and data["sizes"] == [1, 2]
    assert from_json(Outer, data) == record
    assert from_json(Outer, {**data, "maybe": {"name": "m"}}).maybe == Inner("m", 1.0)


def test_unknown_fields_are_ignored_and_defaults_fill_new_ones() -> None:
    data = {"inner": {"name": "a", "added_later": 1}, "sizes": [], "pairs": [], "by_name": {}}
    assert from_json(Outer, data) == Outer(Inner("a"), (), [], {})


@pytest.mark.parametrize(
    ("data", "error"),
    [
        ({"sizes": [], "pairs": [], "by_name": {}}, KeyError),  # `inner` has no default
        ({"inner": {"name": 3}, "sizes": [], "pairs": [], "by_name": {}}, TypeError),
        ({"inner": {"name": "a"}, "sizes": [1.5], "pairs": [], "by_name": {}}, TypeError),
        ({"inner": {"name": "a"}, "sizes": [], "pairs": [[1]], "by_name": {}}, ValueError),
        ({"inner": {"name": "a"}, "sizes": [], "pairs": [], "by_name": {}, "numbers": [True]}, TypeError),
    ],
)
def test_a_missing_or_mistyped_field_is_an_error(data: dict, error: type[Exception]) -> None:
    with pytest.raises(error):
        from_json(Outer, data)


@dataclass(frozen=True)
class Kinds:
    either: int | str
    by_length: dict[int, float]
    nothing: None = None


@dataclass(frozen=True)
class Unreadable:
    tags: set[str]


def test_unions_int_keys_and_null_read_back() -> None:
    for record in (Kinds(3, {128: 1.5}), Kinds("three", {})):
        data = json.loads(json.dumps(to_json(record)))
        assert from_json(Kinds, data) == record
    assert json.loads(json.dumps(to_json(Kinds(3, {128: 1.5}))))["by_length"] == {"128": 1.5}


@pytest.mark.parametrize(
    ("cls", "data", "error", "says"),
    [
        (Kinds, {"either": 1.5, "by_length": {}}, TypeError, "is none of"),
        (Kinds, {"either": 1, "by_length": {"long": 1.0}}, ValueError, "an integer key is needed"),
        (Kinds, {"either": 1, "by_length": [], "nothing": None}, TypeError, "needs an object"),
        (Kinds, {"either": 1, "by_length": {}, "nothing": 0}, TypeError, "null needed"),
        (Outer, {"inner": "a", "sizes": [], "pairs": [], "by_name": {}}, TypeError, "Inner needs an object"),
        (Outer, {"inner": {"name": "a"}, "sizes": "12", "pairs": [], "by_name": {}}, TypeError, "needs a list"),
        (Unreadable, {"tags": ["a"]}, TypeError, "no JSON reading"),
    ],
)
def test_each_kind_of_bad_value_says_what_it_needed(cls: type, data: dict, error: type[Exception], says: str) -> None:
    with pytest.raises(error, match=says):
        from_json(cls, data)


def test_an_export_manifest_written_before_the_formats_layer_reads() -> None:
    manifest = read_manifest(LEGACY / "export")
    assert isinstance(manifest, ExportManifest) and manifest.graph == "routed"
    assert len(manifest.schedule.sparsity_thousandths) == 30 and manifest.with_past is not None
    assert set(manifest.graphs) == {"prefill", "decode"} and manifest.validation.decode_steps == 4
    assert manifest.quantization is None  # written before --quantize: its weights are stored in its dtype


def test_a_run_folder_written_before_the_formats_layer_loads() -> None:
    artifact = load_artifact(LEGACY / "run")
    assert artifact.base.ref == "smollm2-135m" and artifact.routing_mode == "monotone"
    assert artifact.has_trained_router and artifact.training is not None and artifact.training.steps == 30


def test_a_routed_model_saved_without_training_before_the_record_loads(tmp_path: Path) -> None:
    """Format version 1 wrote {} where no training happened; it reads as no training record."""
    config = json.loads((LEGACY / "run" / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "training": {}, "files": {}}))
    assert load_artifact(tmp_path).training is None


def test_another_format_version_is_refused_in_one_line_naming_it(tmp_path: Path) -> None:
    config = json.loads((LEGACY / "run" / CONFIG_FILE).read_text())
    (tmp_path / CONFIG_FILE).write_text(json.dumps({**config, "format_version": 7}))
    with pytest.raises(ArtifactError, match=r"has format version 7; this ftp-deploy reads version 1$"):
        load_artifact(tmp_path)


def test_a_run_state_written_before_the_formats_layer_reads() -> None:
    state = RunFolder(LEGACY / "run").read_state()
    assert state.finished and state.data is not None and state.data.validation_blocks == 8
    phases = state.phases
    assert phases.search is not None and phases.prior is not None and phases.train is not None
    assert phases.finetune is not None and phases.train.checkpoint is not None and phases.train.best_step == 20
    assert state.heldout is not None and state.heldout["trained"].kl_minus["static_uniform"].confidence == 0.95
    assert state.model is not None and state.model.ref == "smollm2-135m"


def test_eval_results_written_before_the_formats_layer_read(tmp_path: Path) -> None:
    shutil.copy(LEGACY / "run" / "eval-results.json", tmp_path / RESULTS_FILE)
    results = EvalResults.read(tmp_path)
    assert list(results.methods) == ["dense", "static", "ftp"] and results.data["arc_easy"].items == 100
    assert results.comparisons["static"]["ftp"]["arc_easy"].inside_noise
    assert results.run is not None and results.run.training is not None and results.run.training.steps == 30
    assert results.settings.placement is not None and results.settings.placement.device == "cpu"


def test_a_verify_report_from_before_its_format_is_refused_in_one_line(tmp_path: Path) -> None:
    """report.json had no format tag before the formats layer: verify again to get a readable one."""
    shutil.copy(LEGACY / "verify-report.json", tmp_path / VerifyReport.FILE)
    with pytest.raises(ArtifactError, match=r"report.json is not an ftp-deploy verify report$"):
        VerifyReport.read(tmp_path)
