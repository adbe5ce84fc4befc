"""What every command shares: one data root (with its environment override), one path from a run
folder to a RoutedModel, the one progress contract (nothing shown by default; rich only in the
command layer), the model options declared once, and verify's summary for a non-terminal."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ftp_deploy import data_root
from ftp_deploy.artifacts import RoutedArtifact, load_artifact, load_routed, save_artifact
from ftp_deploy.cli import app
from ftp_deploy.console import RichProgress
from ftp_deploy.errors import BaseModelMismatchError
from ftp_deploy.evaluation.tasks import task_files
from ftp_deploy.formats.verify_report import OutputParity, ParityReport, Tolerance
from ftp_deploy.models import load_base_model, model_ref_for
from ftp_deploy.progress import NO_PROGRESS
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.config import SELF_SOURCE, default_source
from ftp_deploy.verification.latency import Latency, LatencyComparison
from ftp_deploy.verification.report import summary_lines
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


@pytest.mark.parametrize("command", ["run", "train", "eval", "export", "verify"])
def test_every_command_that_loads_a_model_takes_the_model_options(command: str) -> None:
    result = CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "--model" in result.output and "--trust-remote-code" in result.output


def _parity(logits_max: float, routing: float | None) -> ParityReport:
    stats = {"max": logits_max, "mean": logits_max / 2, "median": logits_max / 4, "p99": logits_max}
    passed = logits_max <= 1e-3
    outputs = [OutputParity("logits", passed, stats, stats), OutputParity("hidden_7", passed, stats, stats)]
    return ParityReport(Tolerance(1e-3, 1e-3), outputs, 0.995, routing, None if passed else "model.layers.7")


def test_summary_lines_fit_a_narrow_log_and_name_each_failure() -> None:
    latency = LatencyComparison(
        routed=[Latency(512, 1, 10, 100.0, 110.0, 5120.0)],
        dense=[Latency(512, 1, 10, 150.0, 160.0, 3413.0)],
        ideal_speedup={512: 1.6},
        peak_rss_mib=900.0,
    )
    lines = summary_lines(_parity(2e-5, 1.0), latency)
    assert lines[0] == "verdict: PASS" and "routing agreement: 100.000%" in lines
    assert "512 tokens: 100.0 ms routed, 1.50x dense" in lines and max(map(len, lines)) <= 80
    failed = summary_lines(_parity(0.5, 0.99), None)
    assert failed[0] == "verdict: FAIL"
    assert [line for line in failed if line.startswith("failed: ")] == [
        "failed: logits: max |diff| 0.5, beyond atol 0.001 x the token's largest |logit| and rtol 0.001",
        "failed: routing decisions agree on 99.0000% of (token, block) pairs, below 99.9%",
    ]
