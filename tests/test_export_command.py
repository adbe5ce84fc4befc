"""`ftp-deploy export` through the CLI entry point: bad input is one line, exit 2, and leaves nothing."""

from __future__ import annotations

import errno
import importlib.util
import os
from pathlib import Path

import pytest
import torch

from ftp_deploy import cli, fileio
from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.errors import ExportError, MissingDependencyError, OutputFolderError
from ftp_deploy.exporters import pipeline, trt_export
from ftp_deploy.exporters.output_folder import check_output_folder, staged_folder
from ftp_deploy.exporters.trt_export import export_trt
from ftp_deploy.formats.export_manifest import MANIFEST_FILE, manifest_mismatches, write_manifest
from ftp_deploy.models import model_ref_for
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import tiny_model, tiny_tokenizer
from tests.test_export_format import sample_manifest


@pytest.fixture
def run_export(capsys: pytest.CaptureFixture[str]):
    """`ftp-deploy export ARGS` through the CLI's entry point; (exit code, stderr)."""

    def run(*args: str | Path) -> tuple[int, str]:
        code = cli.main(["export", *map(str, args)])
        captured = capsys.readouterr()
        assert "Traceback" not in captured.out + captured.err
        return code, captured.err

    return run


def make_run(folder: Path, kind: str = "static", mode: str = "topk", scale: float = 1.0) -> Path:
    base = tiny_model("llama", num_layers=2)
    with torch.no_grad():
        base.model.layers[0].mlp.down_proj.weight.mul_(scale)
    base.save_pretrained(folder / "base")
    tiny_tokenizer().save_pretrained(folder / "base")
    spec = RouterSpec(kind=kind)
    routed = RoutedModel(base, Schedule.from_sparsities([0.3, 0.2]), spec, mode)
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, str(folder / "base"))), folder / "run")
    return folder / "run"


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name not in {"run", "base"})


def test_run_folder_without_a_router(run_export, tmp_path: Path) -> None:
    (tmp_path / "run").mkdir()
    code, err = run_export(tmp_path / "run", "--out", tmp_path / "art")
    assert code == 2 and "ftp_config.json is missing" in err
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--opset", "17"], "opset 17 is not supported"),
        (["--dtype", "int8"], "dtype 'int8' cannot be exported"),
        (["--onnx-only"], "apply to --engine trt only"),
        (["--max-shape", "4,2048"], "apply to --engine trt only"),
        (["--engine", "trt", "--onnx-only", "--max-shape", "4x2048"], "--max-shape takes BATCH,SEQUENCE"),
        (["--engine", "trt", "--onnx-only", "--opt-shape", "8,512"], "the batch range must satisfy min <= opt <= max"),
        (["--engine", "tflite"], "unknown engine 'tflite'"),
        (["--dense", "--debug-outputs"], "the dense model has none"),
    ],
)
def test_unsupported_options(run_export, tmp_path: Path, options: list[str], fragment: str) -> None:
    run = make_run(tmp_path)
    code, err = run_export(run, "--out", tmp_path / "art", *options)
    assert code == 2 and fragment in err
    assert leftovers(tmp_path) == []


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt") is not None and torch.cuda.is_available(), reason="tensorrt and a GPU exist"
)
def test_trt_engine_without_tensorrt_fails_before_exporting(
    run_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the ONNX export started")

    monkeypatch.setattr(trt_export, "export_onnx", never)
    code, err = run_export(make_run(tmp_path), "--out", tmp_path / "art", "--engine", "trt")
    (line,) = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and line.startswith("error: --engine trt needs TensorRT and a CUDA GPU; missing here:")
    assert "pip install 'ftp-deploy[trt]', or pass --onnx-only" in line
    assert leftovers(tmp_path) == []
    with pytest.raises(MissingDependencyError):  # the library call, before it reads the run folder
        export_trt(tmp_path / "no-run", tmp_path / "art")


@pytest.mark.parametrize(
    ("kind", "mode", "fragment"),
    [
        ("random", "topk", "random router"),
        ("learned", "threshold", "needs top-k"),
    ],
)
def test_routers_that_cannot_export(run_export, tmp_path: Path, kind: str, mode: str, fragment: str) -> None:
    code, err = run_export(make_run(tmp_path, kind, mode), "--out", tmp_path / "art")
    assert code == 2 and fragment in err
    assert leftovers(tmp_path) == []


def test_non_empty_out_needs_overwrite_and_overwrite_needs_an_export(run_export, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    (tmp_path / "art").mkdir()
    (tmp_path / "art" / "notes.txt").write_text("mine")
    code, err = run_export(run, "--out", tmp_path / "art")
    assert code == 2 and "pass --overwrite" in err
    code, err = run_export(run, "--out", tmp_path / "art", "--overwrite")
    assert code == 2 and "replaces earlier exports only" in err
    assert (tmp_path / "art" / "notes.txt").read_text() == "mine"
    code, err = run_export(run, "--out", run, "--overwrite")  # never the run folder itself
    assert code == 2 and (run / "ftp_config.json").is_file()


def test_unwritable_out(run_export, tmp_path: Path) -> None:
    code, err = run_export(make_run(tmp_path), "--out", tmp_path / "missing" / "art")
    assert code == 2 and "does not exist" in err
    sysfs = Path("/sys")
    if not sysfs.is_dir():
        pytest.skip("no read-only /sys here to write into")
    code, err = run_export(make_run(tmp_path), "--out", sysfs / "ftp-deploy-export-test")
    assert code == 2 and "cannot write" in err


def test_a_full_disk_midway_is_exit_1_and_leaves_no_folder(
    run_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The README: a file that could not be written is exit 1 (input accepted, work started), one line."""
    run = make_run(tmp_path)

    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio.os, "fsync", full_disk)  # every atomic write (the manifest's among them) syncs
    code, err = run_export(run, "--out", tmp_path / "art")
    assert code == 1
    assert err.splitlines()[-1] == (
        f"error: could not write {tmp_path / 'art'}: No space left on device; nothing was written there"
    )
    assert leftovers(tmp_path) == []  # neither the folder nor its hidden staging copy


def test_an_interrupted_exports_staging_folder_is_removed_and_said(run_export, tmp_path: Path) -> None:
    run = make_run(tmp_path)
    killed = tmp_path / ".art.4194303.k1ll3d.partial"  # above Linux's pid_max: no such process
    killed.mkdir()
    (killed / "model.onnx").write_bytes(b"half")
    legacy = tmp_path / ".art.ab3_x9q2.partial"  # named before staging folders carried their pid
    legacy.mkdir()
    running = tmp_path / f".art.{os.getpid()}.l1ve.partial"  # an export that is running now
    running.mkdir()
    code, err = run_export(run, "--out", tmp_path / "art")
    assert code == 0, err
    assert not killed.exists() and not legacy.exists() and running.is_dir()
    for path in (killed, legacy):
        assert f"removed {path}: the staging folder of an earlier export to {tmp_path / 'art'}" in err
    assert leftovers(tmp_path) == [running.name, "art"]


def test_weights_beyond_fp16_are_refused(run_export, tmp_path: Path) -> None:
    code, err = run_export(make_run(tmp_path, scale=1e6), "--out", tmp_path / "art", "--dtype", "fp16")
    assert code == 2 and "do not fit fp16" in err
    assert leftovers(tmp_path) == []


def test_a_failed_export_leaves_no_folder(run_export, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def half_written(routed, spec, vocab_size, folder: Path) -> Path:
        (folder / "model.onnx").write_bytes(b"half")
        raise ExportError("torch.onnx.export failed: simulated")

    monkeypatch.setattr(pipeline, "export_onnx_file", half_written)
    code, err = run_export(make_run(tmp_path), "--out", tmp_path / "art")
    assert code == 1 and "simulated" in err
    assert leftovers(tmp_path) == []


def test_staged_folder_replaces_an_earlier_export_whole(tmp_path: Path) -> None:
    out = tmp_path / "art"
    with staged_folder(out) as folder:
        (folder / "model.onnx").write_bytes(b"first")
        write_manifest(folder, sample_manifest())
    check_output_folder(out, overwrite=True)
    with pytest.raises(OutputFolderError, match="not empty"):
        check_output_folder(out, overwrite=False)
    with pytest.raises(RuntimeError), staged_folder(out) as folder:
        (folder / "model.onnx").write_bytes(b"broken")
        raise RuntimeError("interrupted")
    assert (out / "model.onnx").read_bytes() == b"first"
    with staged_folder(out) as folder:
        (folder / "model.onnx").write_bytes(b"second")
        write_manifest(folder, sample_manifest())
    assert (out / "model.onnx").read_bytes() == b"second" and manifest_mismatches(out) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    (out / "model.onnx").write_bytes(b"tampered")
    assert manifest_mismatches(out) == ["model.onnx does not match its sha256"]
    (out / MANIFEST_FILE).unlink()
    with pytest.raises(OutputFolderError, match="replaces earlier exports only"):
        check_output_folder(out, overwrite=True)


@pytest.mark.slow
def test_export_command_end_to_end(run_export, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = make_run(tmp_path)
    code, err = run_export(run, "--out", tmp_path / "art", "--last-token-logits")
    assert code == 0, err
    assert manifest_mismatches(tmp_path / "art") == []
    code, err = run_export(run, "--out", tmp_path / "art", "--last-token-logits", "--overwrite", "--opset", "20")
    assert code == 0, err
    assert leftovers(tmp_path) == ["art"]
