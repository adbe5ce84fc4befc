"""`ftp-deploy verify` on tiny exports: pass, a planted weight error, reports, Polygraphy's CLI."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from polygraphy.comparator import RunResults

from ftp_deploy import cli
from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.comparison.feeds import load_feeds, save_feeds
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.formats.export_manifest import MANIFEST_FILE, write_manifest
from ftp_deploy.formats.verify_report import VerifyReport
from ftp_deploy.models import model_ref_for
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import random_batch, tiny_model, tiny_tokenizer
from tests.test_export_format import sample_manifest

PERTURBED_LAYER = 1


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny routed run, its correct debug export, a dense export, and an export of wrong weights."""
    root = tmp_path_factory.mktemp("verify")
    base = tiny_model("llama", num_layers=3)  # few layers: dynamo export time grows with them
    base.save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    torch.manual_seed(1)
    routed = RoutedModel(base, Schedule.from_sparsities([0.3, 0.5, 0.2]), RouterSpec())
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, str(root / "base"))), root / "run")
    export_onnx(root / "run", root / "art", debug_outputs=True)
    export_onnx(root / "run", root / "dense", dense=True)
    with torch.no_grad():
        base.model.layers[PERTURBED_LAYER].mlp.down_proj.weight.mul_(1.5)
    base.save_pretrained(root / "perturbed")
    tiny_tokenizer().save_pretrained(root / "perturbed")
    export_onnx(root / "run", root / "bad", model=str(root / "perturbed"), debug_outputs=True)
    return {"root": root, "run": root / "run", "art": root / "art", "dense": root / "dense", "bad": root / "bad"}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    code = cli.main(["verify", *map(str, args)])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


def test_correct_export_passes_with_full_routing_agreement(exported, capsys, tmp_path: Path) -> None:
    code, out, _ = run_cli(
        capsys, exported["art"], "--baseline", exported["dense"], "--seq-lens", "32,96", "--report", tmp_path
    )
    assert code == 0
    report = VerifyReport.read(tmp_path)
    assert report.passed and report.parity.passed
    assert report.parity.routing_agreement == 1.0
    assert report.parity.top1_agreement == 1.0
    assert {f["seq_len"] for f in report.parity.feeds} >= {1}
    # Piped (not a terminal): the figures that decide, one short line each, and where the tables are.
    assert "verdict: PASS" in out and "routing agreement: 100.000%" in out and "x dense" in out
    assert f"tables: {tmp_path / 'report.md'}" in out and "| output |" not in out
    assert max(len(line) for line in out.splitlines() if not line.startswith(("tables:", "report:"))) <= 80
    # The README's feeds: batch 2, the second row left-padded by a quarter, at each length past 1.
    masks = [feed["attention_mask"] for feed in load_feeds(tmp_path / "inputs.json")]
    padded = [m for m in masks if m.shape[1] > 1]
    assert padded and all(m.shape[0] == 2 and m[0].all() for m in masks)
    for mask in padded:
        pad = mask.shape[1] // 4
        assert not mask[1, :pad].any() and mask[1, pad:].all()


def test_report_files_agree_with_each_other(exported, capsys, tmp_path: Path) -> None:
    assert run_cli(capsys, exported["art"], "--seq-lens", "32", "--report", tmp_path)[0] == 0
    for name in ("report.json", "report.md", "run_results.json", "inputs.json"):
        assert (tmp_path / name).is_file(), name
    report = VerifyReport.read(tmp_path)
    logits = next(o for o in report.parity.outputs if o.name == "logits")
    markdown = (tmp_path / "report.md").read_text()
    assert f"| logits | yes | {logits.absolute['max']:.3g} |" in markdown
    assert report.latency is not None
    latency = report.latency.routed[0]
    assert f"| 32 | 1 | {latency.median_ms:.1f} |" in markdown
    # The saved Polygraphy results reproduce the reported maximum over the valid positions.
    results = RunResults.load(str(tmp_path / "run_results.json"))
    feeds = load_feeds(tmp_path / "inputs.json")
    worst = 0.0
    for ref, got, feed in zip(results["pytorch"], results["onnxruntime"], feeds, strict=True):
        assert ref["logits"].shape[:2] == feed["attention_mask"].shape
        valid = feed["attention_mask"].astype(bool)
        worst = max(worst, float(np.abs(ref["logits"] - got["logits"])[valid].max()))
    assert worst > 0 and logits.absolute["max"] == pytest.approx(worst, rel=1e-6)


def test_perturbed_weights_fail_and_name_the_block(exported, capsys, tmp_path: Path) -> None:
    code, _, err = run_cli(
        capsys,
        exported["bad"],
        "--against",
        exported["run"],
        "--model",
        exported["root"] / "base",
        "--seq-lens",
        "",
        "--report",
        tmp_path,
    )
    assert code == 1
    assert "parity failed: logits" in err
    assert f"model.layers.{PERTURBED_LAYER}" in err
    report = VerifyReport.read(tmp_path)
    hidden = {o.name: o.passed for o in report.parity.outputs}
    assert hidden[f"hidden_{PERTURBED_LAYER - 1}"] and not hidden[f"hidden_{PERTURBED_LAYER}"]


def test_inputs_replay(exported, capsys, tmp_path: Path) -> None:
    assert run_cli(capsys, exported["art"], "--seq-lens", "", "--report", tmp_path / "a")[0] == 0
    code, _, _ = run_cli(
        capsys,
        exported["art"],
        "--seq-lens",
        "",
        "--inputs",
        tmp_path / "a" / "inputs.json",
        "--report",
        tmp_path / "b",
    )
    assert code == 0
    first, second = (VerifyReport.read(tmp_path / name).parity for name in ("a", "b"))
    assert first.feeds == second.feeds and first.outputs == second.outputs


def test_polygraphy_cli_runs_the_export(exported, capsys, tmp_path: Path) -> None:
    assert run_cli(capsys, exported["art"], "--seq-lens", "", "--report", tmp_path)[0] == 0
    polygraphy = Path(sys.executable).with_name("polygraphy")
    result = subprocess.run(
        [
            str(polygraphy),
            "run",
            str(exported["art"] / "model.onnx"),
            "--onnxrt",
            "--load-inputs",
            str(tmp_path / "inputs.json"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PASSED" in result.stdout + result.stderr


def test_tampered_artifact_names_the_file(exported, capsys, tmp_path: Path) -> None:
    copy = tmp_path / "art"
    shutil.copytree(exported["art"], copy)
    data = copy / "model.onnx.data"
    data.write_bytes(data.read_bytes()[:-8] + b"\x00" * 8)
    code, _, err = run_cli(capsys, copy, "--seq-lens", "")
    assert code == 2 and "model.onnx.data does not match its sha256" in err


def test_unloadable_onnx_is_exit_2(exported, capsys, tmp_path: Path) -> None:
    copy = tmp_path / "art"
    shutil.copytree(exported["art"], copy)
    (copy / "model.onnx").write_bytes(b"not an onnx file")
    manifest = json.loads((copy / "manifest.json").read_text())
    import hashlib

    manifest["files"]["model.onnx"] = hashlib.sha256(b"not an onnx file").hexdigest()
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(capsys, copy, "--seq-lens", "")
    assert code == 2 and f"{copy / 'model.onnx'} does not load as an ONNX model" in err


def test_run_for_another_model_is_exit_2(exported, capsys, tmp_path: Path) -> None:
    other = tiny_model("qwen2")
    routed = RoutedModel(other, Schedule.uniform(0.2, 4), RouterSpec(kind="static"))  # 4 layers, not 3
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(other, "tiny-qwen2")), tmp_path / "run")
    code, _, err = run_cli(capsys, exported["art"], "--against", tmp_path / "run", "--seq-lens", "")
    assert code == 2 and "trained for 'tiny-qwen2'" in err


@pytest.mark.parametrize("option", ["--atol", "--rtol"])
def test_non_positive_tolerance_is_exit_2(exported, capsys, option: str) -> None:
    code, _, err = run_cli(capsys, exported["art"], option, "0", "--seq-lens", "")
    assert code == 2 and "tolerances must be > 0" in err


def small_artifact(folder: Path) -> Path:
    """Two files under a manifest: what verify checks before it loads anything."""
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph")
    (folder / "model.onnx.data").write_bytes(b"weights")
    write_manifest(folder, sample_manifest())
    return folder


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda f: (f / "model.onnx.data").unlink(), "does not match its manifest: model.onnx.data is missing"),
        (
            lambda f: (f / "notes.txt").write_text("extra"),
            "does not match its manifest: notes.txt is not in the manifest",
        ),
        (
            lambda f: ((f / "model.onnx.data").unlink(), (f / "extra.bin").write_bytes(b"x")),
            "model.onnx.data is missing; extra.bin is not in the manifest",
        ),
        (lambda f: (f / MANIFEST_FILE).write_text('{"format": "ftp-deploy/onnx-ex'), "manifest.json is not valid JSON"),
        (lambda f: (f / MANIFEST_FILE).write_text("[1, 2]"), "manifest.json is not an ftp-deploy export manifest"),
        (lambda f: (f / MANIFEST_FILE).unlink(), "is not an exported artifact: manifest.json is missing"),
    ],
)
def test_an_artifact_that_differs_from_its_manifest_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, damage: Any, message: str
) -> None:
    folder = small_artifact(tmp_path / "art")
    damage(folder)
    code, _, err = run_cli(capsys, folder, "--seq-lens", "")
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "art-verify").exists()


def test_right_padded_feeds_match_through_the_exported_graph(exported, capsys, tmp_path: Path) -> None:
    """Right padding (a batch of finished sequences, say): the forced-keep last valid token is mid-row."""
    ids, mask = random_batch(2, 40, "right", seed=3)
    ids3, mask3 = random_batch(3, 17, "right", seed=4)
    mask3[2, 5:] = 0  # a third row padded past most of its length
    feeds = [
        OrderedDict(input_ids=i.numpy(), attention_mask=m.numpy())
        for i, m in ((ids, mask), (ids3.masked_fill(mask3 == 0, 0), mask3))
    ]
    save_feeds(feeds, tmp_path / "right.json")
    code, _, _ = run_cli(capsys, exported["art"], "--seq-lens", "", "--inputs", tmp_path / "right.json",
                         "--report", tmp_path / "report")  # fmt: skip
    assert code == 0
    parity = VerifyReport.read(tmp_path / "report").parity
    assert parity.routing_agreement == 1.0 and parity.top1_agreement == 1.0
    assert [f["seq_len"] for f in parity.feeds] == [40, 17]
    results = RunResults.load(str(tmp_path / "report" / "run_results.json"))
    for feed, ref, got in zip(feeds, results["pytorch"], results["onnxruntime"], strict=True):
        valid = feed["attention_mask"].astype(bool)
        assert not valid[:, -1].all()  # the last position is padding in some row
        np.testing.assert_allclose(got["logits"][valid], ref["logits"][valid], atol=1e-3, rtol=1e-3)
        last = valid.sum(1) - 1  # the last valid token is kept by every block, as the spec requires
        for block in range(3):
            indices = got[f"indices_{block}"]
            assert all(int(last[row]) in indices[row] for row in range(len(last)))
