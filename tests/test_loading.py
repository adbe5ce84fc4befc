"""One data root (with its environment override), one path from a run folder to a RoutedModel,
and the one progress contract (nothing shown by default; rich only in the command layer)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from ftp_deploy import data_root
from ftp_deploy.artifacts import RoutedArtifact, load_artifact, load_routed, save_artifact
from ftp_deploy.console import RichProgress
from ftp_deploy.errors import BaseModelMismatchError
from ftp_deploy.evaluation.tasks import task_files
from ftp_deploy.models import load_base_model, model_ref_for
from ftp_deploy.progress import NO_PROGRESS
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.config import SELF_SOURCE, default_source
from tests.conftest import tiny_model


def test_data_root_follows_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(data_root.DATA_ENV, str(tmp_path))
    assert data_root.data_root() == tmp_path
    assert data_root.data_file("wikitext2/wiki.test.raw") == tmp_path / "wikitext2" / "wiki.test.raw"
    assert default_source() == SELF_SOURCE  # no calibration_text there
    (tmp_path / "calibration_text").mkdir()
    assert default_source() == str(tmp_path / "calibration_text")
    (tmp_path / "boolq").mkdir()
    (tmp_path / "boolq" / "val.jsonl").write_text("{}\n")
    assert task_files("boolq", data_root.data_root()) == (tmp_path / "boolq" / "val.jsonl",)


def test_data_root_without_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(data_root.DATA_ENV, raising=False)
    monkeypatch.setattr(data_root, "_CHECKOUT_DATA", tmp_path / "missing")
    assert data_root.data_root() is None  # an installed wheel with nothing configured
    assert data_root.data_file("calibration_text") == tmp_path / "missing" / "calibration_text"
    monkeypatch.setattr(data_root, "_CHECKOUT_DATA", tmp_path)
    assert data_root.data_root() == tmp_path


def test_load_routed_from_a_folder_or_an_artifact(tiny_model_dir: Path, tmp_path: Path) -> None:
    base = load_base_model(str(tiny_model_dir)).model
    routed = RoutedModel(base, Schedule.from_sparsities([0.3] * len(base.model.layers)), RouterSpec(kind="learned"))
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, str(tiny_model_dir))), tmp_path / "run")
    loaded_routed, loaded, artifact = load_routed(tmp_path / "run")
    assert loaded.ref.config_hash == artifact.base.config_hash and loaded_routed.schedule == routed.schedule
    assert loaded_routed.router is not None and routed.router is not None
    for name, tensor in routed.router.state_dict().items():
        assert bool((loaded_routed.router.state_dict()[name] == tensor).all()), name
    again, _, same = load_routed(load_artifact(tmp_path / "run"), str(tiny_model_dir))
    assert same.schedule == artifact.schedule and again.router_spec == loaded_routed.router_spec


def test_load_routed_refuses_another_base_model(tiny_model_dir: Path, tmp_path: Path) -> None:
    other = tiny_model(num_layers=2)
    routed = RoutedModel(other, Schedule.from_sparsities([0.3, 0.2]), RouterSpec(kind="static"))
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(other, "other")), tmp_path / "run")
    with pytest.raises(BaseModelMismatchError):
        load_routed(tmp_path / "run", str(tiny_model_dir))


def test_no_progress_shows_nothing_and_advances_silently(capsys: pytest.CaptureFixture[str]) -> None:
    with NO_PROGRESS.phase("a phase", total=3) as advance:
        advance()
        advance(2, status="done")
    NO_PROGRESS.note("a note")
    assert capsys.readouterr() == ("", "")


def test_rich_progress_counts_each_phase() -> None:
    out = io.StringIO()
    with RichProgress(Console(file=out, width=100)) as progress:
        with progress.phase("scoring", total=4) as advance:
            advance(3, status="three")
            advance()
        with progress.phase("one step"):
            pass
        progress.note("a note")
    text = out.getvalue()
    assert "scoring" in text and "4/4" in text and "one step" in text and "a note" in text
