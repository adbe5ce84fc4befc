"""`ftp-deploy train --resume` after a real SIGKILL: in the schedule search, in the fine-tune, and
between the final save's router and its config; and on a run that had already finished.

The killed run is a subprocess that sends itself SIGKILL at a fixed point (no handler, no
cleanup runs); the resumed run must end where an uninterrupted one does, to the bit.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from ftp_deploy import cli
from ftp_deploy.artifacts import load_artifact
from ftp_deploy.errors import ArtifactError
from ftp_deploy.formats.routed_config import CONFIG_FILE, ROUTER_FILE
from ftp_deploy.formats.run_state import RunState
from ftp_deploy.training.runfolder import RunFolder
from tests.conftest import one_thread, tiny_train_args

pytestmark = pytest.mark.usefixtures("single_thread")

# The killed process: one thread like the tests' own, and SIGKILL to itself at `point`.
KILLER = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from ftp_deploy import cli
from ftp_deploy.formats import record
from ftp_deploy.formats.routed_config import CONFIG_FILE
from ftp_deploy.training import runfolder

point = sys.argv[1]
append = runfolder.RunFolder.append_metrics
def append_then_die(self, record):
    append(self, record)
    if record["phase"] == point:  # the first generation of that search is recorded, the second not run
        os.kill(os.getpid(), signal.SIGKILL)
runfolder.RunFolder.append_metrics = append_then_die
write_json = record.atomic_write_json  # what every document's write goes through
def die_before_config(path, data):
    if point == "save" and path.name == CONFIG_FILE:
        os.kill(os.getpid(), signal.SIGKILL)
    write_json(path, data)
record.atomic_write_json = die_before_config
sys.exit(cli.main(sys.argv[2:]))
"""


train_args = partial(tiny_train_args, steps=3, batch_size=2, search_batch=2, population=3)


def train(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out + captured.err  # notes print on stderr, beside the progress lines


@pytest.fixture(scope="module")
def straight(train_inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("straight") / "run"
    with one_thread():
        assert cli.main(train_args(train_inputs, out)) == 0
    return out


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def state(run: Path) -> RunState:
    return RunFolder(run).read_state()


@pytest.mark.parametrize("point", ["search", "finetune", "save"])
def test_resume_after_sigkill_ends_where_a_straight_run_does(
    point: str, train_inputs: tuple[Path, Path], straight: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", KILLER, point, *train_args(train_inputs, run)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    phases = state(run).phases
    if point == "search":
        assert phases.search is None
    elif point == "finetune":
        assert phases.train is not None and phases.train.done and phases.finetune is None
    else:
        assert (run / ROUTER_FILE).is_file() and not (run / CONFIG_FILE).exists()
        with pytest.raises(ArtifactError):
            load_artifact(run)
    assert not state(run).finished

    train(capsys, *train_args(train_inputs, run), "--resume")
    assert state(run).finished
    resumed, reference = load_artifact(run), load_artifact(straight)
    assert resumed.schedule.thousandths == reference.schedule.thousandths
    assert resumed.router_state is not None and reference.router_state is not None
    assert all(torch.equal(resumed.router_state[k], reference.router_state[k]) for k in reference.router_state)
    # The killed phase's partial records are dropped and rewritten: the metrics read as one run's.
    assert metrics(run) == metrics(straight)


def test_resuming_a_finished_run_changes_nothing(
    train_inputs: tuple[Path, Path], straight: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p: p.read_bytes() for p in sorted(straight.rglob("*")) if p.is_file()}
    out = train(capsys, *train_args(train_inputs, straight), "--resume")
    assert "already holds a finished run; nothing to do" in " ".join(out.split())
    assert {p: p.read_bytes() for p in sorted(straight.rglob("*")) if p.is_file()} == before
