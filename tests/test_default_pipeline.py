"""The pipeline a user runs with the defaults, every stage a real `ftp-deploy` process on a tiny LLaMA:
train -> eval -> export -> export --with-past -> verify -> generate (PyTorch and ONNX Runtime).

The stages run once per session (conftest's `default_pipeline`): only what the tiny model needs
differs from the defaults (short blocks and scored positions, a small eval task); routing, priors,
validation, GA, export and verify settings are the defaults. Each stage reads what the one before
it wrote, and the outputs must agree with each other and with FTP_SPEC section 9's reference.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from ftp_deploy.artifacts import load_artifact, load_routed
from ftp_deploy.fileio import sha256_file
from ftp_deploy.formats.export_manifest import read_manifest, write_manifest
from ftp_deploy.formats.routed_config import CONFIG_FILE, ROUTER_FILE
from ftp_deploy.formats.verify_report import VerifyReport
from ftp_deploy.training.runfolder import RunFolder
from tests.conftest import PIPELINE_PROMPT as PROMPT
from tests.conftest import tiny_tokenizer
from tests.test_cli import assert_one_error_line, cli, section9_text

NEW_TOKENS = 8


def test_train_defaults_route_monotone_with_a_validated_router(default_pipeline: dict[str, Path]) -> None:
    artifact = load_artifact(default_pipeline["run"])
    state = RunFolder(default_pipeline["run"]).read_state()
    assert artifact.routing_mode == "monotone" and artifact.has_trained_router
    train, prior = state.phases.train, state.phases.prior
    assert state.finished and train is not None and train.checkpoint is not None and prior is not None
    assert train.checkpoint.step == 60  # the default steps
    assert [w for w, _ in prior.candidates] == [0.0, 8.0, 32.0, 128.0]


def test_eval_scores_the_trained_run_against_every_default_baseline(default_pipeline: dict[str, Path]) -> None:
    results = json.loads((default_pipeline["run"] / "eval" / "results.json").read_text())
    assert list(results["methods"]) == ["dense", "random", "static", "shortgpt", "ftp"]
    assert results["run"]["router_sha256"] == sha256_file(default_pipeline["run"] / ROUTER_FILE)


def test_both_exports_validate_with_the_default_options(default_pipeline: dict[str, Path]) -> None:
    prefill_only, with_past = read_manifest(default_pipeline["art"]), read_manifest(default_pipeline["art_past"])
    assert prefill_only.graph == with_past.graph == "routed" and prefill_only.routing_mode == "monotone"
    assert not prefill_only.last_token_logits and set(prefill_only.graphs) == {"prefill"}  # all positions
    assert set(with_past.graphs) == {"prefill", "decode", "generate"} and with_past.validation.decode_steps
    tolerance = prefill_only.tolerance
    assert prefill_only.validation.logits_max_abs_diff <= tolerance["atol"]


def test_verify_checks_parity_and_decoding_of_the_with_past_export(default_pipeline: dict[str, Path]) -> None:
    report = VerifyReport.read(default_pipeline["verify"])
    assert report.passed and report.parity.passed
    assert report.decode is not None and report.decode.passed and report.decode.tokens_identical
    assert "verdict: PASS" in (default_pipeline["root"] / "verify.out").read_text()


def test_generate_agrees_in_both_runtimes_with_the_section_9_reference(default_pipeline: dict[str, Path]) -> None:
    routed, _, _ = load_routed(default_pipeline["run"])
    expected = section9_text(routed, PROMPT, NEW_TOKENS)
    run, art, new = default_pipeline["run"], default_pipeline["art_past"], ["--max-new-tokens", "8"]
    runs = {
        "torch, run folder": cli("generate", str(run), "--prompt", PROMPT, *new),
        "onnxrt, export": cli("generate", str(art), "--prompt", PROMPT, *new),
        "torch, export's run": cli("generate", str(art), "--runtime", "torch", "--prompt", PROMPT, *new),
    }
    for name, done in runs.items():
        assert done.returncode == 0, f"{name}: {done.stderr}"
        assert done.stdout.strip() == expected, name
    assert len(tiny_tokenizer()(expected).input_ids) == NEW_TOKENS  # no early end: all eight tokens compared


def test_an_export_folder_alone_generates(default_pipeline: dict[str, Path], tmp_path: Path) -> None:
    """The README's promise: the export holds the tokenizer and what it needs; no run, no base model."""
    alone = tmp_path / "shipped"
    shutil.copytree(default_pipeline["art_past"], alone)
    routed, _, _ = load_routed(default_pipeline["run"])
    expected = section9_text(routed, PROMPT, NEW_TOKENS)
    hidden = {name: default_pipeline[name].rename(default_pipeline[name].with_name(f".{name}-away"))
              for name in ("base", "run")}  # fmt: skip
    try:
        done = cli("generate", str(alone), "--prompt", PROMPT, "--max-new-tokens", "8")
    finally:
        for name, away in hidden.items():
            away.rename(default_pipeline[name])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected


def test_a_changed_source_run_is_refused_where_the_export_needs_it(
    default_pipeline: dict[str, Path], tmp_path: Path
) -> None:
    """verify and generate --runtime torch read the run an export names, hash-checked in one place."""
    run, art = tmp_path / "run", tmp_path / "art"
    shutil.copytree(default_pipeline["run"], run)
    shutil.copytree(default_pipeline["art_past"], art)
    manifest = read_manifest(art)
    write_manifest(art, replace(manifest, source_run=replace(manifest.source_run, path=str(run))))
    config = run / CONFIG_FILE
    config.write_text(config.read_text() + "\n")  # the same settings, another file: not what was exported
    checked = cli("verify", str(art), "--seq-lens", "", "--report", str(tmp_path / "verify"))
    assert checked.returncode == 2
    assert_one_error_line(checked.stderr, f"the run folder {run} that {art} was exported from is gone or changed")
    assert checked.stderr.rstrip().endswith("pass the run folder with --against RUN_DIR")
    shutil.rmtree(run)
    made = cli("generate", str(art), "--runtime", "torch", "--prompt", PROMPT, "--max-new-tokens", "2")
    assert made.returncode == 2
    assert_one_error_line(made.stderr, "is gone or changed; generate from the run folder itself")
