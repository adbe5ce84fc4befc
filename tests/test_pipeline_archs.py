"""A Mistral and a Qwen3 through the whole command line: train, eval, export in half precision, verify.

verify compares the exported graph in the precision it computes in: an fp16 file runs as it is in
ONNX Runtime against PyTorch in fp16; a bf16 file, which ONNX Runtime's CPU provider cannot run,
runs widened to fp32 against PyTorch with the same bf16-rounded weights in fp32, at fp32
tolerances, and the report says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from polygraphy.comparator import RunResults

from ftp_deploy import cli
from ftp_deploy.artifacts import load_artifact
from ftp_deploy.comparison.feeds import load_feeds
from ftp_deploy.formats.verify_report import DEFAULT_TOLERANCES, VerifyReport
from ftp_deploy.models import DTYPES
from tests.conftest import tiny_model, tiny_tokenizer

pytestmark = pytest.mark.usefixtures("single_thread")

WINDOW = 32


def call(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    code = cli.main([str(a) for a in args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def model_folder(folder: Path, arch: str) -> Path:
    tiny_model(arch, num_layers=2).save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def text(count: int, step: int) -> str:
    return " ".join(f"w{i * step % 90}" for i in range(count))


@pytest.mark.parametrize(("arch", "dtype"), [("mistral", "fp16"), ("qwen3", "bf16")])
def test_train_eval_export_verify(arch: str, dtype: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = model_folder(tmp_path / arch, arch)
    capsys.readouterr()
    (tmp_path / "train.txt").write_text(text(400, 7))
    run = tmp_path / "run"
    small = ["--seq-len", "24", "--scored", "8", "--steps", "2", "--batch-size", "2", "--search-batch", "2"]
    search = ["--ga-population", "3", "--ga-generations", "1", "--finetune-generations", "1"]
    call(capsys, "train", "--model", base, "--data", tmp_path / "train.txt", "--out", run, *small, *search)
    thousandths = load_artifact(run).schedule.thousandths

    (tmp_path / "eval.txt").write_text(text(200, 11))
    ppl = f"ppl:{tmp_path / 'eval.txt'}"
    call(capsys, "eval", run, "--tasks", ppl, "--baselines", "static", "--seq-len", WINDOW, "--scored-tokens", 8)
    methods = json.loads((run / "eval" / "results.json").read_text())["methods"]
    assert methods["dense"]["measured"]["token_sparsity"] == 0.0
    skipped = sum((WINDOW * n) // 1000 for n in thousandths)  # full windows: the contract's kept counts
    assert methods["ftp"]["tasks"][ppl]["measured"]["token_sparsity"] == pytest.approx(
        skipped / (WINDOW * len(thousandths)), abs=1e-12
    )

    art = tmp_path / "art"
    call(capsys, "export", run, "--engine", "onnx", "--out", art, "--dtype", dtype, "--debug-outputs")
    out = call(capsys, "verify", art, "--seq-lens", "", "--report", tmp_path / "report")
    report = VerifyReport.read(tmp_path / "report")
    native = dtype == "fp16"
    compute = dtype if native else "fp32"
    assert report.dtype == dtype and report.parity.passed and report.parity.routing_agreement == 1.0
    tolerance = report.parity.tolerance
    assert (tolerance.atol, tolerance.rtol) == DEFAULT_TOLERANCES[compute]
    assert ("widened to fp32" in report.compared) != native and "compared: " in out

    # The reference that ran is the routed model in the arithmetic the report names, on the export's weights.
    weights = tiny_model(arch, num_layers=2)
    for parameter in weights.parameters():  # the exporter rounds parameters; buffers stay fp32
        parameter.data = parameter.data.to(DTYPES[dtype]).to(DTYPES[compute])
    reference = load_artifact(run).build(weights)
    results = RunResults.load(str(tmp_path / "report" / "run_results.json"))
    for feed, saved in zip(load_feeds(tmp_path / "report" / "inputs.json"), results["pytorch"], strict=True):
        with torch.no_grad():
            logits = reference(torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])).logits
        # Summation order may differ in the last fp32 bit; rounding the weights or computing in
        # another precision moves the logits by 1e-4 and more.
        np.testing.assert_allclose(saved["logits"], logits.float().numpy(), rtol=1e-5, atol=1e-6)
