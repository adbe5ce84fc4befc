"""Data-parallel training: N gloo processes end where one process with the same global batch and seed does.

The fast tests fork two processes that join a gloo group through a file store and run the real
trainer, search and validation on a tiny LLaMA. The slow ones run `ftp-deploy train` itself: with
`--num-processes 2` against one process, and as two processes started the way torchrun starts
them, one of which is killed (SIGKILL) or frozen (SIGSTOP) mid-training.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict
from datetime import timedelta
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

from ftp_deploy import cli
from ftp_deploy.artifacts import load_artifact
from ftp_deploy.errors import ConfigError
from ftp_deploy.formats.record import to_json
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.losses import LossWeights
from ftp_deploy.training.ranks import ONE_PROCESS, Ranks
from ftp_deploy.training.reference import DenseReference
from ftp_deploy.training.runfolder import RunFolder
from ftp_deploy.training.search import ScheduleSpace, SearchConfig, genetic_search
from ftp_deploy.training.trainer import RouterTrainer, TrainConfig, new_router
from tests.conftest import VOCAB, one_thread, tiny_model, tiny_train_args

pytestmark = pytest.mark.usefixtures("single_thread")

SCHEDULE = Schedule.from_sparsities([0.2, 0.5, 0.3, 0.4])
CONFIG = TrainConfig(steps=4, batch_size=5, lr=2e-2, scored=8)  # 5 rows: shares of 2 and 3
STEPS = 4
TOLERANCE = 1e-6


def blocks(count: int) -> torch.Tensor:
    return torch.randint(4, VOCAB, (count, 24), generator=torch.Generator().manual_seed(1))


def planted(schedule: Schedule) -> float:
    """A fitness with one best schedule, cheap enough to run hundreds of times."""
    return float(np.abs(np.asarray(schedule.sparsities) - [0.1, 0.25, 0.35, 0.5]).sum())


def work(ranks: Ranks) -> dict:
    """Training steps, a validation and a search, as each rank of a run does them."""
    run = RouterTrainer(tiny_model(), SCHEDULE, blocks(7), CONFIG, LossWeights(), new_router(0), 0, ranks)
    metrics = [asdict(run.train_step()) for _ in range(STEPS)]
    validation = DenseReference(run.base, blocks(10), CONFIG.scored).kl(run.routed, ranks)  # 3 chunks
    evaluated_here = []

    def fitness(schedule: Schedule) -> float:
        evaluated_here.append(schedule.thousandths)
        return planted(schedule)

    space = ScheduleSpace(0.3, [1.0] * 4)
    search = genetic_search(fitness, space, Schedule.uniform(0.3, 4), SearchConfig(8, 4), seed=3, ranks=ranks)
    return {
        "router": {name: t.clone() for name, t in run.router.state_dict().items()},
        "metrics": metrics,
        "validation": validation,
        "search": to_json(search.phase(0.0)),
        "evaluated_here": len(evaluated_here),
    }


def _rank(rank: int, store: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo", init_method=f"file://{store}", rank=rank, world_size=2, timeout=timedelta(seconds=60)
    )
    try:
        result = work(Ranks(rank, 2))
    finally:
        dist.destroy_process_group()
    save_file(result.pop("router"), f"{out}/router-{rank}.safetensors")
    Path(f"{out}/result-{rank}.json").write_text(json.dumps(result))


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    out = tmp_path_factory.mktemp("ranks")
    with one_thread():  # before the fork: forked children must not inherit a busy OpenMP pool
        mp.start_processes(_rank, args=(str(out / "store"), str(out)), nprocs=2, start_method="fork")
    results = []
    for rank in range(2):
        result = json.loads((out / f"result-{rank}.json").read_text())
        results.append({**result, "router": load_file(out / f"router-{rank}.safetensors")})
    return results


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_gloo_processes_train_the_router_one_process_trains(two_ranks: list[dict]) -> None:
    one = work(ONE_PROCESS)
    moved = max_difference(one["router"], new_router(0).state_dict())
    assert moved > 1e-3  # the comparison below is of a router that trained
    for result in two_ranks:
        assert max_difference(result["router"], one["router"]) <= TOLERANCE
        for mine, theirs in zip(result["metrics"], one["metrics"], strict=True):
            assert mine.keys() == theirs.keys()
            assert all(abs(mine[k] - theirs[k]) <= TOLERANCE for k in mine)
        # Whole evaluations are shared out and gathered exactly: the same floats as one process.
        assert result["validation"] == one["validation"]
        assert result["search"] == one["search"]
    assert all(result["evaluated_here"] > 0 for result in two_ranks)
    assert sum(result["evaluated_here"] for result in two_ranks) == one["search"]["evaluations"]


def test_shares_cover_the_global_batch_once() -> None:
    rows = list(range(7))
    shares = [rows[Ranks(rank, 3).share(7)] for rank in range(3)]
    assert [row for share in shares for row in share] == rows and [len(s) for s in shares] == [2, 2, 3]
    with pytest.raises(ConfigError, match=r"--batch-size 3 .* cannot be shared by 4 processes"):
        Ranks(0, 4).share(3)


# --- `ftp-deploy train` with several processes ---------------------------------------------------------------

# A rank started as torchrun starts it (RANK, WORLD_SIZE, MASTER_ADDR/PORT in its environment);
# rank 1 sends itself `signal` before training step `step` (no handler runs, nothing is cleaned up).
RANK_SCRIPT = """
import os, signal, sys
import torch
torch.set_num_threads(1)
from ftp_deploy import cli
from ftp_deploy.training import trainer

how, step = sys.argv[1], int(sys.argv[2])
if os.environ["RANK"] == "1":
    train_step = trainer.RouterTrainer.train_step
    def train_step_or_stop(self):
        if self.step == step:
            os.kill(os.getpid(), getattr(signal, how))
        return train_step(self)
    trainer.RouterTrainer.train_step = train_step_or_stop
sys.exit(cli.main(sys.argv[3:]))
"""


train_args = partial(tiny_train_args, steps=6, batch_size=4, search_batch=8, population=4)


@pytest.fixture(scope="module")
def one_process(train_inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("one") / "run"
    with one_thread():
        assert cli.main([*train_args(train_inputs, out), "--checkpoint-every", "2"]) == 0
    return out


def last_router(run: Path) -> dict[str, torch.Tensor]:
    """The router of the last training step (the artifact holds the best-validated one)."""
    train = RunFolder(run).read_state().phases.train
    assert train is not None and train.checkpoint is not None
    return {k: v for k, v in load_file(run / train.checkpoint.file).items() if k.startswith("router.")}


def assert_same_run(run: Path, reference: Path) -> None:
    """Same schedules, routers within TOLERANCE, metrics within TOLERANCE, the same files."""
    ours, theirs = load_artifact(run), load_artifact(reference)
    assert ours.schedule.thousandths == theirs.schedule.thousandths
    assert ours.router_state is not None and theirs.router_state is not None
    assert max_difference(ours.router_state, theirs.router_state) <= TOLERANCE
    assert max_difference(last_router(run), last_router(reference)) <= TOLERANCE
    records = [(run / "metrics.jsonl").read_text().splitlines() for run in (run, reference)]
    for mine, others in zip(*(map(json.loads, r) for r in records), strict=True):
        assert mine.keys() == others.keys()
        for key, value in mine.items():
            assert (
                value == pytest.approx(others[key], abs=TOLERANCE) if isinstance(value, float) else value == others[key]
            )
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == sorted(
        p.relative_to(reference) for p in reference.rglob("*")
    )


# Small enough for the fast set: two GA generations of 3, two training steps.
small_args = partial(tiny_train_args, steps=2, batch_size=2, search_batch=2, population=3)


@pytest.fixture(scope="module")
def small_one_process(train_inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small-one") / "run"
    with one_thread():
        assert cli.main(small_args(train_inputs, out)) == 0
    assert processes_of(out) == 1
    return out


def processes_of(run: Path) -> int:
    """How many processes the run's process group had (torch.distributed's world size, as run.json records it)."""
    return RunFolder(run).read_state().processes


@pytest.mark.parametrize(
    ("launcher", "processes_option"),
    [
        (["-m", "ftp_deploy.cli"], ["--num-processes", "2"]),  # torch's elastic launcher, from the command
        (["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "-m", "ftp_deploy.cli"], []),
    ],
    ids=["num-processes", "accelerate-launch"],
)
def test_two_processes_through_the_cli_end_where_one_process_does(
    train_inputs: tuple[Path, Path],
    small_one_process: Path,
    tmp_path: Path,
    launcher: list[str],
    processes_option: list[str],
) -> None:
    """The README's launch commands on CPU: really two processes, the same run as one process."""
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, *launcher, *small_args(train_inputs, run), *processes_option],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert processes_of(run) == 2
    assert_same_run(run, small_one_process)


@pytest.mark.slow
def test_num_processes_2_ends_where_one_process_does(
    train_inputs: tuple[Path, Path], one_process: Path, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "ftp_deploy.cli",
            *train_args(train_inputs, run),
            "--checkpoint-every",
            "2",
            "--num-processes",
            "2",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 0, done.stderr
    assert processes_of(run) == 2
    assert_same_run(run, one_process)


@pytest.mark.slow
def test_bad_input_under_num_processes_is_one_line_and_exit_2(train_inputs: tuple[Path, Path], tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("not a folder")
    done = subprocess.run(
        [sys.executable, "-m", "ftp_deploy.cli", *train_args(train_inputs, taken), "--num-processes", "2"],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert done.returncode == 2
    assert [line for line in done.stderr.splitlines() if line.strip()] == [
        f"error: --out {taken} is a file, not a folder"
    ]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_ranks(args: list[str], how: str, step: int) -> list[subprocess.Popen[str]]:
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2"}
    return [
        subprocess.Popen(
            [sys.executable, "-c", RANK_SCRIPT, how, str(step), *args],
            env={**env, "RANK": str(rank), "LOCAL_RANK": str(rank)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(2)
    ]


@pytest.mark.slow
def test_killing_rank_1_mid_training_leaves_a_run_that_resumes(
    train_inputs: tuple[Path, Path], one_process: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    first, second = start_ranks([*train_args(train_inputs, run), "--checkpoint-every", "2"], "SIGKILL", step=3)
    _, err = first.communicate(timeout=300)
    assert second.wait(timeout=60) == -signal.SIGKILL
    # The survivor does not hang: it ends with one line and exit 1.
    assert first.returncode == 1
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "another process of this run stopped" in lines[0] and "--resume" in lines[0], err
    state = RunFolder(run).read_state()
    assert state.phases.train is not None and state.phases.train.checkpoint is not None
    assert state.phases.train.checkpoint.step == 2 and not state.finished

    assert cli.main([*train_args(train_inputs, run), "--checkpoint-every", "2", "--resume"]) == 0, (
        capsys.readouterr().err
    )
    assert_same_run(run, one_process)


@pytest.mark.slow
def test_a_rank_that_stops_answering_ends_the_others_after_the_timeout(
    train_inputs: tuple[Path, Path], tmp_path: Path
) -> None:
    args = [*train_args(train_inputs, tmp_path / "run"), "--rank-timeout", "15"]
    first, second = start_ranks(args, "SIGSTOP", step=1)
    try:
        began = time.monotonic()
        _, err = first.communicate(timeout=300)
        assert first.returncode == 1
        assert "did not answer within 15 s" in err and err.count("error:") == 1, err
        assert time.monotonic() - began < 120
    finally:
        second.kill()
        second.wait()
