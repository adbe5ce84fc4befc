"""Saving and loading routed models: round trip, base-model checks, corrupt and partial folders."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from ftp_deploy import fileio
from ftp_deploy.artifacts import RoutedArtifact, load_artifact, save_artifact
from ftp_deploy.errors import ArtifactError, BaseModelMismatchError
from ftp_deploy.formats.routed_config import CONFIG_FILE, ROUTER_FILE
from ftp_deploy.models import model_ref_for
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import TINY_BUILDERS, random_batch, tiny_model, training_record


def _saved(folder: Path, arch: str = "llama", router_seed: int = 3) -> RoutedModel:
    base = tiny_model(arch)
    torch.manual_seed(router_seed)
    routed = RoutedModel(base, Schedule.from_sparsities([0.1, 0.2, 0.3, 0.4]), RouterSpec())
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, "tiny"), training_record(steps=5)), folder)
    return routed


def test_round_trip_gives_identical_logits(tmp_path: Path) -> None:
    original = _saved(tmp_path / "run")
    loaded = load_artifact(tmp_path / "run")
    assert loaded.has_trained_router and loaded.training == training_record(steps=5)
    rebuilt = loaded.build(tiny_model())
    ids, mask = random_batch(2, 17, "left")
    with torch.no_grad():
        assert torch.equal(original(ids, mask).logits, rebuilt(ids, mask).logits)
    config = json.loads((tmp_path / "run" / CONFIG_FILE).read_text())
    assert config["format_version"] == 1
    assert config["schedule"]["sparsity_thousandths"] == [100, 200, 300, 400]
    assert config["router"]["parameters"] == 385
    assert set(config["factors"]) == {"position", "attention_score", "attention_rank", "required_sparsity"}


@pytest.mark.parametrize("arch", ["qwen2", "mistral"])
def test_mismatched_base_model_is_refused(tmp_path: Path, arch: str) -> None:
    _saved(tmp_path / "run")
    artifact = load_artifact(tmp_path / "run")
    with pytest.raises(BaseModelMismatchError, match="made for 'tiny'"):
        artifact.build(tiny_model(arch))


def test_other_layer_count_is_refused(tmp_path: Path) -> None:
    _saved(tmp_path / "run")
    config = tiny_model().config
    config.num_hidden_layers = 2
    other = type(TINY_BUILDERS["llama"]())(config)
    with pytest.raises(BaseModelMismatchError, match="2 layers, not 4"):
        load_artifact(tmp_path / "run").build(other)


def test_corrupt_router_is_refused(tmp_path: Path) -> None:
    _saved(tmp_path / "run")
    path = tmp_path / "run" / ROUTER_FILE
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ArtifactError, match="corrupt or truncated"):
        load_artifact(tmp_path / "run")


def test_other_format_version_is_refused(tmp_path: Path) -> None:
    _saved(tmp_path / "run")
    path = tmp_path / "run" / CONFIG_FILE
    config = json.loads(path.read_text())
    config["format_version"] = 99
    path.write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="format version 99"):
        load_artifact(tmp_path / "run")


def test_schedule_length_must_match_layers(tmp_path: Path) -> None:
    _saved(tmp_path / "run")
    path = tmp_path / "run" / CONFIG_FILE
    config = json.loads(path.read_text())
    config["schedule"]["sparsity_thousandths"] = [100, 200]
    path.write_text(json.dumps(config))
    with pytest.raises(ArtifactError, match="2 blocks but the model has 4 layers"):
        load_artifact(tmp_path / "run")


def test_missing_folder_and_config(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ArtifactError, match=r"ftp_config\.json is missing"):
        load_artifact(tmp_path / "empty")


def crash_on_config_write(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the rename that publishes ftp_config.json fail, as a power cut would."""
    real_replace = os.replace

    def crash_on_config(src: str, dst: str) -> None:
        if str(dst).endswith(CONFIG_FILE):
            raise KeyboardInterrupt("power cut")
        real_replace(src, dst)

    monkeypatch.setattr(fileio.os, "replace", crash_on_config)


def test_interrupted_save_of_another_router_never_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new router over an old one, cut before its config: the old config names the old hash."""
    run = tmp_path / "run"
    _saved(run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    crash_on_config_write(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _saved(run, router_seed=4)
    monkeypatch.undo()
    assert not any(p.name.endswith(".tmp") for p in run.iterdir())
    assert (run / CONFIG_FILE).read_bytes() == before[CONFIG_FILE]
    assert (run / ROUTER_FILE).read_bytes() != before[ROUTER_FILE]
    with pytest.raises(ArtifactError, match=rf"{ROUTER_FILE} is corrupt or truncated: its sha256 does not match"):
        load_artifact(run)
    rewritten = _saved(run, router_seed=4)  # the save run again to its end: the new router loads
    ids, mask = random_batch(2, 17, "left")
    with torch.no_grad():
        assert torch.equal(load_artifact(run).build(tiny_model())(ids, mask).logits, rewritten(ids, mask).logits)


def test_interrupted_first_save_never_loads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    crash_on_config_write(monkeypatch)
    with pytest.raises(KeyboardInterrupt):
        _saved(tmp_path / "run")
    monkeypatch.undo()
    with pytest.raises(ArtifactError):
        load_artifact(tmp_path / "run")


def test_static_artifact_has_no_router_file(tmp_path: Path) -> None:
    base = tiny_model()
    routed = RoutedModel(base, Schedule.uniform(0.3, 4), RouterSpec(kind="static"))
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, "tiny")), tmp_path / "run")
    assert not (tmp_path / "run" / ROUTER_FILE).exists()
    artifact = load_artifact(tmp_path / "run")
    assert artifact.router_spec.kind == "static" and not artifact.has_trained_router
