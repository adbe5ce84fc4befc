"""`ftp-deploy train` end to end on a tiny LLaMA: run folder, resume after a kill, bad input."""

from __future__ import annotations

import dataclasses
import errno
from pathlib import Path

import pytest
import torch
import typer
from typer.testing import CliRunner

from ftp_deploy import cli
from ftp_deploy.artifacts import load_artifact
from ftp_deploy.errors import ArtifactError, ConfigError, DataError, FtpDeployError, StorageError
from ftp_deploy.formats.record import from_json
from ftp_deploy.formats.run_state import Validated
from ftp_deploy.progress import NO_PROGRESS
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.training import pipeline, runfolder
from ftp_deploy.training.command import train
from ftp_deploy.training.data import DataConfig
from ftp_deploy.training.pipeline import run_training
from ftp_deploy.training.search import SearchConfig
from ftp_deploy.training.settings import RunSettings
from ftp_deploy.training.trainer import StepMetrics, TrainConfig
from tests.conftest import random_batch, tiny_model, tiny_tokenizer, tiny_train_args

pytestmark = pytest.mark.usefixtures("single_thread")

STEPS = 6


class Killed(Exception):
    """Stands in for a kill: raised from the step hook in the middle of training."""


@pytest.fixture
def text_file(tmp_path: Path) -> Path:
    generator = torch.Generator().manual_seed(0)
    path = tmp_path / "text.txt"
    path.write_text(" ".join(f"w{int(i)}" for i in torch.randint(0, 90, (400,), generator=generator)), "utf-8")
    return path


def settings(model: Path, data: Path, **changes: object) -> RunSettings:
    base = RunSettings(
        model=str(model),
        data=str(data),
        sparsity=0.3,
        data_config=DataConfig(seq_len=24, max_heldout=2),
        search=SearchConfig(population=4, generations=2),
        finetune=SearchConfig(population=3, generations=2, elites=1),
        train=TrainConfig(steps=STEPS, batch_size=2, lr=2e-2, checkpoint_every=2, scored=8, search_batch=2),
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


def checkpoint_step(out: Path) -> int:
    train = runfolder.RunFolder(out).read_state().phases.train
    assert train is not None and train.checkpoint is not None
    return train.checkpoint.step


def train_losses(out: Path) -> list[float]:
    return [r["loss"] for r in runfolder.RunFolder(out).read_metrics() if r["phase"] == "train"]


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_run_leaves_the_routed_model_report_and_metrics(
    tiny_model_dir: Path, text_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    state = run_training(settings(tiny_model_dir, text_file), out)
    artifact = load_artifact(out)
    assert artifact.has_trained_router and artifact.training is not None and artifact.training.steps == STEPS
    assert state.phases.finetune is not None
    assert artifact.schedule.mean() == pytest.approx(0.3)
    assert artifact.schedule.thousandths == state.phases.finetune.best_thousandths
    ids, mask = random_batch(2, 20, "left")
    with torch.no_grad():
        artifact.build(tiny_model())(ids, mask)  # loads and runs in compact mode
    records = runfolder.RunFolder(out).read_metrics()
    assert [r["step"] for r in records if r["phase"] == "train"] == list(range(STEPS))
    assert [r["index"] for r in records if r["phase"] == "search"] == [0, 1]
    assert records[[r["phase"] for r in records].index("train") + STEPS - 1]["guide_weight"] == 0.0
    for png in ("schedule.png", "losses.png"):
        assert (out / png).read_bytes().startswith(b"\x89PNG")
    report = (out / "report.md").read_text()
    assert "![per-block sparsity](schedule.png)" in report and "trained router, fine-tuned schedule" in report
    assert list((out / "checkpoints").iterdir()) == [out / "checkpoints" / "step-0000006.safetensors"]
    assert state.finished and set(state.heldout or {}) == {"static_uniform", "static_searched", "trained"}


@pytest.mark.parametrize("routing", ["monotone", "topk"])
def test_the_prior_with_the_lowest_calibration_kl_is_the_one_trained(
    tiny_model_dir: Path, text_file: Path, tmp_path: Path, routing: str
) -> None:
    out = tmp_path / "run"
    state = run_training(
        settings(tiny_model_dir, text_file, routing_mode=routing, train=TrainConfig(steps=1, scored=8, search_batch=2)),
        out,
    )
    prior = state.phases.prior
    assert prior is not None
    artifact = load_artifact(out)
    assert artifact.routing_mode == routing
    assert "| router prior | " in (out / "report.md").read_text()
    if routing == "topk":  # the attention factors would bring back stale tokens: the static order alone
        assert prior.candidates == [] and prior.attention_weight == 0.0
        return
    scores = dict(prior.candidates)
    assert sorted(scores) == [0.0, 8.0, 32.0, 128.0]
    assert prior.attention_weight == min(scores, key=scores.__getitem__)
    assert artifact.training is not None and artifact.training.prior_attention_weight == prior.attention_weight
    assert state.phases.train is not None
    assert state.phases.train.validation[0][1] == pytest.approx(scores[prior.attention_weight])


def test_a_searched_schedule_that_loses_on_the_validation_blocks_is_not_kept(
    tiny_model_dir: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def uniform_wins(run: pipeline._Run, routed: RoutedModel) -> float:
        return 0.0 if len(set(routed.schedule.thousandths)) == 1 else 1.0

    monkeypatch.setattr(pipeline._Run, "_validation_kl", uniform_wins)
    state = run_training(settings(tiny_model_dir, text_file), tmp_path / "run")
    search, finetune = state.phases.search, state.phases.finetune
    assert search is not None and finetune is not None
    assert search.validation == Validated(start=0.0, found=1.0)  # the calibration batch preferred another
    assert set(search.best_thousandths) == {300} and search.best_fitness == search.start_fitness
    assert finetune.best_thousandths == search.best_thousandths


class Notes:
    """A Progress that keeps the notes."""

    def __init__(self) -> None:
        self.notes: list[str] = []

    def phase(self, description: str, total: int | None = None, completed: int = 0):
        return NO_PROGRESS.phase(description, total, completed)

    def note(self, text: str) -> None:
        self.notes.append(text)


def _rows(blocks: torch.Tensor) -> set[tuple[int, ...]]:
    return {tuple(row.tolist()) for row in blocks}


def test_validation_blocks_are_never_trained_on_searched_or_held_out(
    tiny_model_dir: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The blocks that decide every kept router, prior and schedule are held out of everything else,
    and a --validation-batch beyond a quarter of the blocks is capped aloud, not silently."""
    references: list[torch.Tensor] = []
    trained: list[torch.Tensor] = []

    class RecordingReference(pipeline.DenseReference):
        def __init__(self, base: object, ids: torch.Tensor, scored: int) -> None:
            references.append(ids.clone())
            super().__init__(base, ids, scored)

    class RecordingTrainer(pipeline.RouterTrainer):
        def __init__(self, base: object, schedule: object, blocks: torch.Tensor, *args: object, **kw: object) -> None:
            trained.append(blocks.clone())
            super().__init__(base, schedule, blocks, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(pipeline, "DenseReference", RecordingReference)
    monkeypatch.setattr(pipeline, "RouterTrainer", RecordingTrainer)
    progress = Notes()
    train_config = TrainConfig(steps=2, batch_size=2, scored=8, search_batch=2, validation_batch=16)
    state = run_training(settings(tiny_model_dir, text_file, train=train_config), tmp_path / "run", progress=progress)
    assert state.data is not None and state.data.validation_blocks is not None
    held, blocks = state.data.validation_blocks, state.data.train_blocks
    assert held == blocks // 4 < 16 and blocks > 8  # capped to a quarter of the training blocks
    assert progress.notes == [
        f"--validation-batch 16: the data has {blocks} training blocks and at most a quarter of them validate, "
        f"so {held} do"
    ]
    assert f"the last {held} validate the choices, never trained on" in (tmp_path / "run" / "report.md").read_text()
    training = _rows(trained[0])
    assert len(trained) == 1 and len(training) == blocks - held  # no two blocks alike: rows name blocks
    (validation,) = (_rows(r) for r in references if len(r) == held)
    calibration, heldout = (_rows(r) for r in references if len(r) != held)  # in the order they are first used
    assert calibration <= training and len(calibration) == 2
    assert not validation & training and not validation & heldout and not heldout & training


def test_resume_after_a_kill_gives_identical_losses(tiny_model_dir: Path, text_file: Path, tmp_path: Path) -> None:
    run_training(settings(tiny_model_dir, text_file), tmp_path / "straight")

    def kill_at_step_4(metrics: StepMetrics) -> None:
        if metrics.step == 4:  # after step 4 ran, before step 5's checkpoint: the last one is at step 4
            raise Killed

    out = tmp_path / "killed"
    with pytest.raises(Killed):
        run_training(settings(tiny_model_dir, text_file), out, on_step=kill_at_step_4)
    state = runfolder.RunFolder(out).read_state()
    assert state.phases.train is not None and state.phases.train.checkpoint is not None
    assert state.phases.train.checkpoint.step == 4 and state.phases.finetune is None
    resumed_steps: list[int] = []
    run_training(settings(tiny_model_dir, text_file), out, resume=True, on_step=lambda m: resumed_steps.append(m.step))
    assert resumed_steps == [4, 5]
    assert train_losses(out) == train_losses(tmp_path / "straight")
    assert torch.equal(
        load_artifact(out).router_state["net.0.weight"],  # type: ignore[index]
        load_artifact(tmp_path / "straight").router_state["net.0.weight"],  # type: ignore[index]
    )


def test_a_full_disk_while_checkpointing_keeps_the_last_checkpoint(
    tiny_model_dir: Path, text_file: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "run"
    real_write = runfolder.atomic_write_bytes

    def write(path: Path, data: bytes) -> None:
        if path.name == "step-0000004.safetensors":
            raise OSError(errno.ENOSPC, "No space left on device")
        real_write(path, data)

    monkeypatch.setattr(runfolder, "atomic_write_bytes", write)
    with pytest.raises(StorageError, match="No space left on device"):
        run_training(settings(tiny_model_dir, text_file), out)
    assert checkpoint_step(out) == 2
    assert not list(out.rglob("*.tmp"))
    monkeypatch.setattr(runfolder, "atomic_write_bytes", real_write)
    run_training(settings(tiny_model_dir, text_file), out, resume=True)
    run_training(settings(tiny_model_dir, text_file), tmp_path / "straight")
    assert train_losses(out) == train_losses(tmp_path / "straight")


def test_resume_refuses_another_model_sparsity_or_setting(
    tiny_model_dir: Path, text_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    run_training(settings(tiny_model_dir, text_file, train=TrainConfig(steps=2, scored=8, search_batch=2)), out)
    before = snapshot(out)
    with pytest.raises(ConfigError, match=r"at sparsity 0.3, not .* at 0.4"):
        run_training(settings(tiny_model_dir, text_file, sparsity=0.4), out, resume=True)
    other = tmp_path / "qwen"
    tiny_model("qwen2").save_pretrained(other)
    tiny_tokenizer().save_pretrained(other)
    with pytest.raises(ConfigError, match="holds a run of"):
        run_training(settings(other, text_file), out, resume=True)
    with pytest.raises(ConfigError, match=r"train.steps: 2 -> 6"):
        run_training(settings(tiny_model_dir, text_file), out, resume=True)
    with pytest.raises(ArtifactError, match="pass --resume"):
        run_training(settings(tiny_model_dir, text_file), out)
    assert snapshot(out) == before


def test_bad_input_writes_nothing(tiny_model_dir: Path, text_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match="outside"):
        settings(tiny_model_dir, text_file, sparsity=0.95)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("caf\xe9".encode("latin-1"))
    with pytest.raises(DataError, match="not UTF-8"):
        run_training(settings(tiny_model_dir, latin), out)
    with pytest.raises(ArtifactError, match="not a training run folder"):
        run_training(settings(tiny_model_dir, text_file), tmp_path, resume=True)
    assert not out.exists()


def test_a_spent_time_budget_still_leaves_a_static_equivalent_router(
    tiny_model_dir: Path, text_file: Path, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    state = run_training(settings(tiny_model_dir, text_file), out, time_budget=1e-6)
    artifact = load_artifact(out)
    assert state.phases.train is not None and state.phases.train.stopped_by_time_budget
    assert artifact.training is not None and artifact.training.steps == 0
    assert state.phases.search is not None and state.phases.search.evaluations == 1  # only the start was scored
    base = tiny_model()
    ids, mask = random_batch(2, 24, None)
    with torch.no_grad():
        routed = artifact.build(base)(ids, mask)
        static = RoutedModel(base, artifact.schedule, RouterSpec(kind="static"))(ids, mask)
    assert all(torch.equal(a, b) for a, b in zip(routed.keep, static.keep, strict=True))


def test_the_command(tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    app = typer.Typer()
    app.command()(train)
    common = ["--model", str(tiny_model_dir), "--data", "self", "--seq-len", "24", "--scored", "8"]
    small = ["--steps", "2", "--ga-population", "3", "--ga-generations", "1", "--finetune-generations", "1"]
    result = CliRunner().invoke(app, [*common, *small, "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert f"run folder: {tmp_path / 'run'}" in result.output.replace("\n", "")
    training = load_artifact(tmp_path / "run").training
    assert training is not None and training.data == "self"
    assert list((tmp_path / "cache" / "ftp-deploy" / "self-data").glob("*.safetensors"))
    result = CliRunner().invoke(app, [*common, "--sparsity", "1.5", "--out", str(tmp_path / "bad")])
    assert isinstance(result.exception, FtpDeployError) and "outside" in str(result.exception)
    assert not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("options", "routing", "priors", "validation"),
    [
        (["--routing", "topk"], "topk", [], None),  # under top-k the static order alone: no prior to score
        (["--attention-priors", "0,16", "--validation-batch", "2"], "monotone", [0.0, 16.0], 2),
    ],
    ids=["routing-topk", "priors-and-validation-batch"],
)
def test_routing_priors_and_validation_batch_take_effect_from_the_command_line(
    train_inputs: tuple[Path, Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    routing: str,
    priors: list[float],
    validation: int | None,
) -> None:
    out = tmp_path / "run"
    argv = tiny_train_args(train_inputs, out, steps=1, batch_size=2, search_batch=2, population=3)
    assert cli.main([*argv, *options]) == 0, capsys.readouterr().err
    state = runfolder.RunFolder(out).read_state()
    assert load_artifact(out).routing_mode == routing == from_json(RunSettings, state.settings).routing_mode
    assert state.phases.prior is not None and [weight for weight, _ in state.phases.prior.candidates] == priors
    assert state.data is not None
    held = state.data.validation_blocks
    assert held == (validation if validation is not None else min(16, state.data.train_blocks // 4))
