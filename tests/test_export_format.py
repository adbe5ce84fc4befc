"""The artifact format: ExportManifest round-trips through manifest.json, and refuses other versions."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from ftp_deploy.errors import ArtifactError
from ftp_deploy.formats.export_manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    BaseModelRecord,
    ExportedArtifact,
    ExportManifest,
    ScheduleRecord,
    SourceRun,
    TensorRtSection,
    ValidationRecord,
    manifest_mismatches,
    read_manifest,
    write_manifest,
)
from ftp_deploy.formats.plan_manifest import PluginId, ProfileRecord
from ftp_deploy.formats.record import from_json, to_json
from ftp_deploy.formats.routed_config import RouterRecord


def sample_manifest(**changes: object) -> ExportManifest:
    """A complete manifest with made-up values (what export_onnx would write, less the files)."""
    manifest = ExportManifest(
        engine="onnx",
        graph="routed",
        source_run=SourceRun("/runs/a", "0" * 64),
        base_model=BaseModelRecord("smollm2-135m", "llama", 2, 64, "1" * 64, "smollm2-135m"),
        schedule=ScheduleRecord((300, 200), 1000),
        router=RouterRecord(kind="static"),
        routing_mode="topk",
        op_contract={"domain": "ftp", "ops": ["TokenCompact", "TokenScatter"]},
        dtype="fp32",
        opset=18,
        last_token_logits=True,
        debug_outputs=False,
        inputs={"input_ids": {"0": "batch", "1": "sequence"}},
        outputs={"logits": {"0": "batch"}},
        tolerance={"atol": 1e-3, "rtol": 1e-3, "min_routing_agreement": 0.999},
        validation=ValidationRecord((24, 61), 2, False, 2.5e-6, 1.0, None),
        smoke_inference={"provider": "CPUExecutionProvider", "input_shape": [1, 8], "seconds": 0.01},
        versions={"ftp_deploy": "0.1.0"},
    )
    return replace(manifest, **changes)  # type: ignore[arg-type]


def test_manifest_round_trips_through_json() -> None:
    manifest = sample_manifest(files={"model.onnx": "2" * 64})
    data = json.loads(json.dumps(to_json(manifest)))
    assert from_json(ExportManifest, data) == manifest
    assert data["tensorrt"] is None and data["schedule"] == {"sparsity_thousandths": [300, 200], "sparsity_den": 1000}
    profile = ProfileRecord(("input_ids", "attention_mask"), (1, 1), (1, 512), (4, 2048))
    section = TensorRtSection(profile, "fp32", (PluginId("ftp", "TokenCompact", "1"),), "build_engine.sh")
    with_trt = sample_manifest(engine="trt", tensorrt=section)
    assert from_json(ExportManifest, json.loads(json.dumps(to_json(with_trt)))) == with_trt


def test_write_manifest_hashes_every_other_file(tmp_path: Path) -> None:
    (tmp_path / MODEL_FILE).write_bytes(b"graph")
    written = write_manifest(tmp_path, sample_manifest())
    assert set(written.files) == {MODEL_FILE}
    assert read_manifest(tmp_path) == written and manifest_mismatches(tmp_path) == []


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"format_version": 3}, "format version 3; this ftp-deploy reads version 2"),
        ({"format_version": None}, "format version None"),
        ({"dtype": None, "validation": {"lengths": [24]}}, "incomplete or malformed"),
    ],
)
def test_other_versions_and_broken_manifests_are_refused(tmp_path: Path, change: dict, fragment: str) -> None:
    header = {"format": ExportManifest.FORMAT, "format_version": ExportManifest.VERSION}
    data = {**header, **to_json(sample_manifest()), **change}
    (tmp_path / MANIFEST_FILE).write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match=fragment) as caught:
        read_manifest(tmp_path)
    assert str(tmp_path / MANIFEST_FILE) in str(caught.value)


def test_opening_checks_the_files_and_the_onnx_file(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="artifact folder not found"):
        ExportedArtifact.open(tmp_path / "missing")
    (tmp_path / MODEL_FILE).write_bytes(b"not an onnx file")
    write_manifest(tmp_path, sample_manifest())
    with pytest.raises(ArtifactError, match="does not load as an ONNX model"):
        ExportedArtifact.open(tmp_path)
    (tmp_path / "extra.txt").write_text("added later")
    with pytest.raises(ArtifactError, match=r"extra\.txt is not in the manifest"):
        ExportedArtifact.open(tmp_path)
