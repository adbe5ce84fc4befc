"""`ftp-deploy eval` end to end on a tiny model, and its one-line errors for bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.errors import ArtifactError, DataError, UsageError
from ftp_deploy.evaluation import command as eval_command
from ftp_deploy.evaluation.pipeline import evaluate
from ftp_deploy.evaluation.report import markdown_report
from ftp_deploy.flops import flop_ratio
from ftp_deploy.formats.eval_results import EvalResults
from ftp_deploy.models import model_ref_for
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.stats import describe
from tests.conftest import tiny_model, training_record

SCHEDULE = (0.2, 0.3, 0.3, 0.4)


def words(count: int, step: int) -> str:
    return " ".join(f"w{i * step % 90}" for i in range(count))


def save_run(folder: Path, model_dir: Path, kind: str = "learned") -> Path:
    base = tiny_model()
    routed = RoutedModel(base, Schedule.from_sparsities(SCHEDULE), RouterSpec(kind=kind))
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, str(model_dir)), training_record()), folder)
    return folder


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    (folder / "calibration_text").mkdir(parents=True)
    (folder / "calibration_text/exllamav2_wiki.utf8").write_text(f'<doc id="1">\n{words(200, 7)}\n</doc>\n')
    items = [
        {"context": words(5 + i, 3 + i), "choices": [f" w{i + j}" for j in range(4)], "label": i % 4} for i in range(6)
    ]
    (folder / "mc.jsonl").write_text("".join(json.dumps(item) + "\n" for item in items))
    (folder / "text.txt").write_text(words(120, 11))
    return folder


def test_eval_writes_results_report_and_chart(tmp_path: Path, tiny_model_dir: Path, data_dir: Path) -> None:
    run = save_run(tmp_path / "run", tiny_model_dir)
    app = typer.Typer()
    app.command()(eval_command.evaluate)
    tasks = f"mc:{data_dir / 'mc.jsonl'},ppl:{data_dir / 'text.txt'}"
    args = [str(run), "--tasks", tasks, "--data-dir", str(data_dir), "--seq-len", "32", "--scored-tokens", "8"]
    result = CliRunner().invoke(app, [*args, "--limit", "5"])
    assert result.exit_code == 0, result.output
    assert "avg acc" in result.output and "│ ftp " in result.output
    results = json.loads((run / "eval/results.json").read_text())
    assert list(results["methods"]) == ["dense", "random", "static", "shortgpt", "ftp"]
    assert set(results["retention"]) == set(results["methods"])
    assert results["methods"]["static"]["schedule_thousandths"] == [200, 300, 300, 400]
    assert results["methods"]["random"]["schedule_thousandths"] == [300] * 4
    mc = results["data"][f"mc:{data_dir / 'mc.jsonl'}"]
    assert (mc["items"], mc["available"], mc["chance"]) == (5, 6, 0.25)
    assert len(next(iter(mc["files"].values()))) == 64
    assert len(results["model"]["weights_sha256"]) == 64 and len(results["run"]["router_sha256"]) == 64
    methods = results["methods"]
    assert methods["dense"]["measured"] == {"token_sparsity": 0.0, "flop_ratio": 1.0}
    assert methods["shortgpt"]["measured"]["token_sparsity"] == 0.25  # one of four blocks removed
    # The perplexity task scores full 32-token windows: each block keeps 32 - (32 * n) // 1000
    # tokens, 26, 23, 23 and 20 of its schedule, so 36 of 128 (token, block) pairs are skipped.
    ppl = f"ppl:{data_dir / 'text.txt'}"
    config = tiny_model().config
    for name in ("static", "ftp"):
        measured = methods[name]["tasks"][ppl]["measured"]
        assert measured["token_sparsity"] == 36 / 128, name
        assert measured["flop_ratio"] == pytest.approx(flop_ratio(config, Schedule.from_sparsities(SCHEDULE), 32))
        # Short multiple-choice items skip floor(T * s) of T tokens: never more than the schedule.
        assert 0.2 < methods[name]["measured"]["token_sparsity"] <= sum(SCHEDULE) / 4, name
    report = (run / "eval/report.md").read_text()
    assert "| method |" in report and "| ftp |" in report
    assert (run / "eval/retention.png").read_bytes().startswith(b"\x89PNG")


def test_intervals_noise_flags_and_standard_errors_reach_results_and_report(
    tmp_path: Path, tiny_model_dir: Path, data_dir: Path
) -> None:
    """What the README promises of eval's figures, read back from the files a user gets."""
    run = save_run(tmp_path / "run", tiny_model_dir)
    task = f"mc:{data_dir / 'mc.jsonl'}"
    evaluate(run, tasks=task, baselines="dense,static", data_dir=data_dir, seq_len=32, scored_tokens=8)
    results = EvalResults.read(run / "eval")  # the file, as any reader gets it
    report = (run / "eval/report.md").read_text()
    methods = results.methods
    for name, method in methods.items():  # each accuracy with its binomial standard error
        metrics = method.tasks[task]
        n, acc, stderr, correct = metrics.items, metrics.acc, metrics.acc_stderr, metrics.correct
        assert n is not None and acc is not None and stderr is not None and correct is not None
        assert acc == sum(correct) / n
        assert stderr == pytest.approx((acc * (1 - acc) / (n - 1)) ** 0.5), name
        assert f"{100 * acc:.1f} ±{100 * stderr:.1f}" in report, name
    comparisons = results.comparisons
    assert set(comparisons) == {"dense", "static"}
    assert set(comparisons["dense"]) == {"static", "ftp"} and set(comparisons["static"]) == {"dense", "ftp"}
    for reference, per_method in comparisons.items():
        for method, per_task in per_method.items():
            diff = per_task[task]
            ours, theirs = (methods[m].tasks[task].correct or [] for m in (method, reference))
            assert diff.items == len(ours) == len(theirs)
            assert diff.mean == pytest.approx((sum(ours) - sum(theirs)) / len(ours))
            assert diff.low <= diff.mean <= diff.high and diff.confidence == 0.95
            assert diff.inside_noise == (diff.low <= 0 <= diff.high)
            cell = describe(diff, 100)
            assert cell.endswith(" (noise)") == diff.inside_noise
            row = next(line for line in report.splitlines() if line.startswith(f"| {method} | {cell}"))
            assert row  # the report's table for this reference carries the same interval
        assert f"Accuracy minus {reference}, in points, with the paired bootstrap 95% interval" in report
    # Six items leave every difference inside the noise; one outside it loses its flag in the report.
    real = results.comparisons["static"]["ftp"][task]
    clear = replace(real, low=0.01, high=max(real.high, 0.02), inside_noise=False)
    results.comparisons["static"]["ftp"][task] = clear
    assert f"| ftp | {describe(clear, 100)} |" in markdown_report(results, chart=False)
    assert "(noise)" not in describe(clear, 100)


def test_a_run_without_a_trained_router_is_refused(tmp_path: Path, tiny_model_dir: Path, data_dir: Path) -> None:
    run = save_run(tmp_path / "run", tiny_model_dir, kind="static")
    with pytest.raises(ArtifactError, match="holds no trained router"):
        evaluate(run, tasks=f"mc:{data_dir / 'mc.jsonl'}", baselines="dense", data_dir=data_dir)
    assert not (run / "eval").exists()


@pytest.mark.parametrize(
    ("tasks", "limit", "seq_len", "error", "message"),
    [
        (
            "arc_easy,winogrande",
            None,
            512,
            DataError,
            r"unknown task 'winogrande'; known tasks: wikitext2, lambada, arc_easy",
        ),
        ("piqa", None, 512, DataError, r"task piqa: file not found: .*piqa/valid.jsonl"),
        ("mc:{data}/mc.jsonl", 0, 512, DataError, r"--limit must be at least 1 item, got 0"),
        ("ppl:{data}/text.txt", None, 16, UsageError, r"--scored-tokens must be in \[1, seq_len=16\), got 64"),
    ],
)
def test_bad_input_is_one_clear_error(
    tmp_path: Path,
    tiny_model_dir: Path,
    data_dir: Path,
    tasks: str,
    limit: int | None,
    seq_len: int,
    error: type,
    message: str,
) -> None:
    run = save_run(tmp_path / "run", tiny_model_dir)
    with pytest.raises(error, match=message) as caught:
        evaluate(run, tasks=tasks.format(data=data_dir), limit=limit, data_dir=data_dir, seq_len=seq_len)
    assert caught.value.exit_code == 2
    assert not (run / "eval").exists()


def test_shortgpt_without_calibration_text_names_the_file(tmp_path: Path, tiny_model_dir: Path) -> None:
    run = save_run(tmp_path / "run", tiny_model_dir)
    (tmp_path / "mc.jsonl").write_text('{"context": "w1", "choices": [" w2", " w3"], "label": 0}\n')
    with pytest.raises(DataError, match=r"calibration text not found: .*calibration_text/exllamav2_wiki.utf8"):
        evaluate(run, tasks=f"mc:{tmp_path / 'mc.jsonl'}", data_dir=tmp_path)
