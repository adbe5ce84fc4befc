"""The pipeline a user runs with the defaults, every stage a real `ftp-deploy` process on a tiny LLaMA:
train -> eval -> export -> export --with-past -> verify -> generate (PyTorch and ONNX Runtime).

Only what the tiny model needs differs from the defaults (short blocks and scored positions, a
small eval task); routing, priors, validation, GA, export and verify settings are the defaults.
Each stage reads what the one before it wrote, and the outputs must agree with each other and
with FTP_SPEC section 9's reference.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from ftp_deploy.artifacts import ROUTER_FILE, load_artifact, load_routed
from ftp_deploy.export_format import read_manifest
from ftp_deploy.fileio import sha256_file
from tests.conftest import tiny_model, tiny_tokenizer
from tests.test_cli import cli, section9_text

PROMPT = "w3 w14 w15 w9 w26 w5 w35 w8 w9 w79 w32 w38 w46 w26 w43 w38 w32 w79 w50 w28"
NEW_TOKENS = 8


def words(count: int, seed: int) -> str:
    generator = torch.Generator().manual_seed(seed)
    return " ".join(f"w{int(i)}" for i in torch.randint(0, 90, (count,), generator=generator))


@pytest.fixture(scope="module")
def stages(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The folders the pipeline writes, each by its own command with the defaults."""
    root = tmp_path_factory.mktemp("pipeline")
    tiny_model().save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    data = root / "data"
    (data / "calibration_text").mkdir(parents=True)  # where eval's ShortGPT baseline reads its text
    (data / "calibration_text" / "exllamav2_wiki.utf8").write_text(f'<doc id="1">\n{words(400, 1)}\n</doc>\n')
    (root / "text.txt").write_text(words(1600, 0))
    items = [{"context": words(6 + i % 5, 10 + i), "choices": [f" w{i + j}" for j in range(4)], "label": i % 4}
             for i in range(8)]  # fmt: skip
    (data / "mc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    folders = {"root": root, "base": root / "base", "data": data, "run": root / "run"}
    for name in ("art", "art_past", "verify"):
        folders[name] = root / name
    small = ["--seq-len", "24", "--scored", "8"]
    steps = [
        ("train", ["train", "--model", str(folders["base"]), "--data", str(root / "text.txt"), "--out",
                   str(folders["run"]), *small]),
        ("eval", ["eval", str(folders["run"]), "--tasks", f"mc:{data / 'mc.jsonl'}", "--data-dir", str(data),
                  "--seq-len", "64", "--scored-tokens", "8"]),
        ("export", ["export", str(folders["run"]), "--out", str(folders["art"])]),
        ("export-with-past", ["export", str(folders["run"]), "--out", str(folders["art_past"]), "--with-past"]),
        ("verify", ["verify", str(folders["art_past"]), "--report", str(folders["verify"])]),
    ]  # fmt: skip
    for stage, argv in steps:
        done = cli(*argv)
        assert done.returncode == 0, f"{stage}: {done.stderr}"
        (root / f"{stage}.out").write_text(done.stdout + done.stderr)
    return folders


def test_train_defaults_route_monotone_with_a_validated_router(stages: dict[str, Path]) -> None:
    artifact = load_artifact(stages["run"])
    state = json.loads((stages["run"] / "run.json").read_text())
    assert artifact.routing_mode == "monotone" and artifact.has_trained_router
    assert state["finished"] and state["phases"]["train"]["checkpoint"]["step"] == 60  # the default steps
    assert [w for w, _ in state["phases"]["prior"]["candidates"]] == [0.0, 8.0, 32.0, 128.0]


def test_eval_scores_the_trained_run_against_every_default_baseline(stages: dict[str, Path]) -> None:
    results = json.loads((stages["run"] / "eval" / "results.json").read_text())
    assert list(results["methods"]) == ["dense", "random", "static", "shortgpt", "ftp"]
    assert results["run"]["router_sha256"] == sha256_file(stages["run"] / ROUTER_FILE)


def test_both_exports_validate_with_the_default_options(stages: dict[str, Path]) -> None:
    prefill_only, with_past = read_manifest(stages["art"]), read_manifest(stages["art_past"])
    assert prefill_only.graph == with_past.graph == "routed" and prefill_only.routing_mode == "monotone"
    assert not prefill_only.last_token_logits and set(prefill_only.graphs) == {"prefill"}  # all positions
    assert set(with_past.graphs) == {"prefill", "decode"} and with_past.validation.decode_steps
    tolerance = prefill_only.tolerance
    assert prefill_only.validation.logits_max_abs_diff <= tolerance["atol"]


def test_verify_checks_parity_and_decoding_of_the_with_past_export(stages: dict[str, Path]) -> None:
    report = json.loads((stages["verify"] / "report.json").read_text())
    assert report["passed"] and report["parity"]["passed"]
    assert report["decode"]["checked"] and report["decode"]["passed"] and report["decode"]["tokens_identical"]
    assert "verdict: PASS" in (stages["root"] / "verify.out").read_text()


def test_generate_agrees_in_both_runtimes_with_the_section_9_reference(stages: dict[str, Path]) -> None:
    routed, _, _ = load_routed(stages["run"])
    expected = section9_text(routed, PROMPT, NEW_TOKENS)
    runs = {
        "torch, run folder": cli("generate", str(stages["run"]), "--prompt", PROMPT, "--max-new-tokens", "8"),
        "onnxrt, export": cli("generate", str(stages["art_past"]), "--prompt", PROMPT, "--max-new-tokens", "8"),
        "torch, export's run": cli(
            "generate", str(stages["art_past"]), "--runtime", "torch", "--prompt", PROMPT, "--max-new-tokens", "8"
        ),
    }
    for name, done in runs.items():
        assert done.returncode == 0, f"{name}: {done.stderr}"
        assert done.stdout.strip() == expected, name
    assert len(tiny_tokenizer()(expected).input_ids) == NEW_TOKENS  # no early end: all eight tokens compared


def test_an_export_folder_alone_generates(stages: dict[str, Path], tmp_path: Path) -> None:
    """The README's promise: the export holds the tokenizer and what it needs; no run, no base model."""
    alone = tmp_path / "shipped"
    shutil.copytree(stages["art_past"], alone)
    routed, _, _ = load_routed(stages["run"])
    expected = section9_text(routed, PROMPT, NEW_TOKENS)
    hidden = {name: stages[name].rename(stages[name].with_name(f".{name}-away")) for name in ("base", "run")}
    try:
        done = cli("generate", str(alone), "--prompt", PROMPT, "--max-new-tokens", "8")
    finally:
        for name, away in hidden.items():
            away.rename(stages[name])
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == expected
