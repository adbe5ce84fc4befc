"""`ftp-deploy summary` (make demo's last lines): from the run folder and verify's report; one line if one is gone."""

from __future__ import annotations

from pathlib import Path

import pytest

from ftp_deploy import cli
from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.errors import ArtifactError
from ftp_deploy.formats.run_state import HeldoutRow, RunState, TrainPhase
from ftp_deploy.formats.verify_report import (
    DecodeReport,
    Latency,
    LatencyComparison,
    ParityReport,
    Tolerance,
    VerifyReport,
)
from ftp_deploy.models import model_ref_for
from ftp_deploy.placement import Placement
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.summary import run_summary
from tests.conftest import tiny_model, training_record

TRAINING = training_record(router_from_step=10, steps=11, train_seconds=113.0, prior_attention_weight=8.0)
VALIDATION = [(0, 0.0400), (10, 0.0350), (11, 0.0360)]
HELDOUT = {
    "trained": HeldoutRow(0.0331, 0.902, 15.39, 14.99, 512.0, kl_stderr=0.002, window_kl=[0.03, 0.036]),
    "static_uniform": HeldoutRow(0.0353, 0.898, 15.34, 14.99, 512.0, kl_stderr=0.002, window_kl=[0.033, 0.038]),
}


def verify_report() -> VerifyReport:
    """What verify writes for a passing --with-past export timed against its dense baseline (made-up figures)."""
    parity = ParityReport(Tolerance(1e-3, 1e-3), [], 1.0, routing_agreement=1.0, first_failing_block=None)
    decode = DecodeReport(8, 2, 23, True, None, 3e-5, True, True, 2e-5, True, 31.4, [])
    routed = [Latency(128, 1, 10, 10.0, 11.0, 12800.0), Latency(1024, 1, 10, 100.0, 110.0, 10240.0)]
    dense = [Latency(128, 1, 10, 11.6, 12.0, 11000.0), Latency(1024, 1, 10, 141.0, 150.0, 7260.0)]
    latency = LatencyComparison(routed, dense, {128: 1.43, 1024: 1.49}, peak_rss_mib=900.0)
    return VerifyReport(
        "art", "dense", "onnxrt", "fp32", "routed", "the fp32 file as exported", Placement(), {}, True, parity,
        decode, "checked", latency,
    )  # fmt: skip


@pytest.fixture
def demo_out(tmp_path: Path) -> Path:
    base = tiny_model("llama", num_layers=2)
    routed = RoutedModel(base, Schedule.from_sparsities([0.3, 0.3]), RouterSpec())
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, "tiny"), TRAINING), tmp_path / "run")
    state = RunState(heldout=HELDOUT)
    state.phases.train = TrainPhase(validation=VALIDATION)
    state.write(tmp_path / "run")
    (tmp_path / "verify").mkdir()
    verify_report().write(tmp_path / "verify")
    return tmp_path


def test_summary_states_what_was_trained_how_close_and_how_fast(demo_out: Path) -> None:
    trained, close, parity, generation, faster = run_summary(demo_out / "run", demo_out / "verify")
    assert "learned router for tiny at mean sparsity 0.30: 11 router steps in 113 s" in trained
    assert "validation KL 0.0400 at step 0 (the attention-weighted prior (weight 8))" in trained
    assert "fell to 0.0350 at step 10" in trained
    assert "(-12.5%); that router is kept" in trained
    assert generation.startswith("Generation: the export's prefill and 8 decode steps match PyTorch's cached decode")
    assert "KL to dense 0.0331" in close and "uniform schedule: 0.0353" in close and "90%" in close
    assert parity.startswith("Exported graph vs PyTorch: PASS")
    assert "1.41x the dense export at 1024 tokens (ideal by FLOPs 1.49x); 1.16x at 128" in faster


def test_an_unfinished_run_or_a_missing_report_is_one_line(demo_out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (demo_out / "verify" / "report.json").unlink()
    assert cli.main(["summary", str(demo_out / "run"), "--verify-report", str(demo_out / "verify")]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    RunState().write(demo_out / "run")
    with pytest.raises(ArtifactError, match="did not finish"):
        run_summary(demo_out / "run", demo_out / "verify")


def test_without_a_verify_report_the_summary_is_the_run_alone(
    demo_out: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["summary", str(demo_out / "run")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["Trained", "Close to dense"]
    assert run_summary(demo_out / "run") == run_summary(demo_out / "run", demo_out / "verify")[:2]
