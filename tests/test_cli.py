"""The command line: listed commands, one-line errors with non-zero exits, no tracebacks."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from ftp_deploy import cli as cli_module
from ftp_deploy import errors
from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.cli import app
from ftp_deploy.generation.reference import extended_keep, masked_forward_with_keep
from ftp_deploy.models import model_ref_for
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import DEFAULT_S_MAX, Schedule
from ftp_deploy.training.data import DataConfig
from ftp_deploy.training.losses import LossWeights
from ftp_deploy.training.search import SearchConfig
from ftp_deploy.training.settings import FINETUNE_SEARCH
from ftp_deploy.training.trainer import TrainConfig
from tests.conftest import tiny_model, tiny_tokenizer

# What `ftp-deploy --help`, each command's --help and a bad option value must not load: they
# take seconds to import, and the CLI loads them only inside the command that needs them.
HEAVY_MODULES = ("torch", "transformers", "onnx", "onnxruntime", "polygraphy", "matplotlib", "numpy")


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ftp_deploy.cli", *args], capture_output=True, text=True, timeout=300, check=False
    )


def assert_one_error_line(stderr: str, fragment: str) -> None:
    """The README's promise: an error is one line on stderr, the last one; no blank line before it.

    Lines before it can only be progress lines of work that had started (plain lines in a pipe).
    """
    lines = stderr.splitlines()
    assert lines and lines[-1].startswith("error: ") and fragment in lines[-1], stderr
    assert all(line.strip() for line in lines), f"a blank line on stderr: {stderr!r}"
    assert not any(line.startswith(("error", "Error", "Usage", "Try ")) for line in lines[:-1]), stderr


def assert_clean_error(result: subprocess.CompletedProcess[str], code: int, fragment: str) -> None:
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert_one_error_line(result.stderr, fragment)


@pytest.fixture
def run_dir(tmp_path: Path) -> Path:
    base = tiny_model()
    routed = RoutedModel(base, Schedule.from_sparsities([0.1, 0.2, 0.3, 0.4]), RouterSpec())
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, "tiny-other")), tmp_path / "run")
    return tmp_path / "run"


def test_help_lists_the_pipeline_commands() -> None:
    result = cli("--help")
    assert result.returncode == 0
    for command in ("train", "eval", "export", "verify", "info", "generate"):
        assert command in result.stdout


def test_info_prints_schedule_and_router(run_dir: Path) -> None:
    result = cli("info", str(run_dir))
    assert result.returncode == 0, result.stderr
    assert "385 parameters" in result.stdout and "tiny-other" in result.stdout
    assert "0.250" in result.stdout  # mean of 0.1..0.4


def test_info_reports_the_sparsity_top_k_achieves(run_dir: Path) -> None:
    from rich.console import Console

    from ftp_deploy.summary import summarize_artifact

    console = Console(record=True, width=120)
    console.print(summarize_artifact(run_dir))
    text = console.export_text()
    # Kept at 512 tokens: 461 + 410 + 359 + 308 of 4 x 512 slots (512 - 512 * n // 1000 per block).
    assert "achieved at 512 tokens" in text and f"{1 - 1538 / 2048:.3f} (top-k capacity)" in text
    assert "learned, 385 parameters, topk routing" in text and "tiny-other (llama, 4 layers)" in text
    rows = [line.split("│")[1:3] for line in text.splitlines() if line.count("│") == 4]
    assert [(int(block), float(value)) for block, value in rows] == [(0, 0.1), (1, 0.2), (2, 0.3), (3, 0.4)]
    assert "█" * 16 in text  # block 3's bar: 0.4 of 40 characters


def test_info_on_a_folder_that_is_not_a_run(tmp_path: Path) -> None:
    assert_clean_error(cli("info", str(tmp_path)), 2, "ftp_config.json is missing")


def test_corrupt_router_is_one_line(run_dir: Path) -> None:
    (run_dir / "router.safetensors").write_bytes(b"garbage")
    before = sorted((p.name, p.read_bytes()) for p in run_dir.iterdir())
    assert_clean_error(cli("info", str(run_dir)), 2, "corrupt or truncated")
    assert sorted((p.name, p.read_bytes()) for p in run_dir.iterdir()) == before


def greedy_text(model: torch.nn.Module, prompt: str, steps: int) -> str:
    """Greedy continuation by argmax over full forwards: the dense row of `run`."""
    tokenizer = tiny_tokenizer()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        for _ in range(steps):
            logits = model(ids).logits[:, -1]
            ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], dim=1)
    return tokenizer.decode(ids[0, -steps:], skip_special_tokens=True)


def section9_tokens(model: RoutedModel, ids: torch.Tensor, mask: torch.Tensor, steps: int) -> torch.Tensor:
    """Greedy tokens [B, steps] by FTP_SPEC section 9's reference: the prompt routed once (its keep
    decisions from the routed forward), each new token kept in every block, by full masked forwards."""
    with torch.no_grad():
        keep = model(ids, mask, mode="compact").keep
        sequence, full_mask = ids, mask
        for step in range(steps):
            logits = masked_forward_with_keep(model, sequence, full_mask, extended_keep(keep, step))[:, -1]
            token = logits.argmax(-1, keepdim=True)
            sequence = torch.cat([sequence, token], dim=1)
            full_mask = torch.cat([full_mask, torch.ones_like(token)], dim=1)
    return sequence[:, ids.shape[1] :]


def section9_text(model: RoutedModel, prompt: str, steps: int) -> str:
    """The routed row of `run` and the output of `generate`: the cached decode's greedy continuation."""
    tokenizer = tiny_tokenizer()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    return tokenizer.decode(section9_tokens(model, ids, torch.ones_like(ids), steps)[0], skip_special_tokens=True)


def run_continuations(stdout: str) -> dict[str, str]:
    """`ftp-deploy run`'s continuation lines, {model: text}: the lines after the prompt's, before the table."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("prompt: ")) + 1
    name_and_text = [line.partition(": ") for line in lines[start : start + 2]]
    return {name: text for name, _, text in name_and_text}


def run_rows(*args: str) -> dict[str, str]:
    """`ftp-deploy run`'s continuations as {model: text}, printed in a pipe (80 columns)."""
    result = subprocess.run(
        [sys.executable, "-m", "ftp_deploy.cli", "run", *args], capture_output=True, text=True, timeout=300, check=False
    )
    assert result.returncode == 0, result.stderr
    assert max(len(line) for line in result.stdout.splitlines() if "│" in line) <= 80  # the table fits a pipe
    return run_continuations(result.stdout)


def test_run_prints_each_routed_models_own_continuation(tmp_path: Path) -> None:
    """Two different routers on a base model with other weights than the one they were saved with."""
    base = tiny_model(seed=1)
    base.save_pretrained(tmp_path / "base")
    tiny_tokenizer().save_pretrained(tmp_path / "base")
    prompt = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"
    routers = {
        "learned": (Schedule.from_sparsities([0.1, 0.2, 0.3, 0.4]), RouterSpec()),
        "static": (Schedule.uniform(0.6, 4), RouterSpec(kind="static")),
    }
    seen = set()
    for name, (schedule, spec) in routers.items():
        torch.manual_seed(5)
        saved_for = tiny_model()
        routed = RoutedModel(saved_for, schedule, spec)
        save_artifact(RoutedArtifact.from_model(routed, model_ref_for(saved_for, "tiny-other")), tmp_path / name)
        rows = run_rows("--model", str(tmp_path / "base"), "--router", str(tmp_path / name), "--prompt", prompt,
                        "--max-new-tokens", "4")  # fmt: skip
        on_base = RoutedModel(base, schedule, spec, router=routed.router)
        label = f"routed ({tmp_path / name}, mean sparsity {schedule.mean():.2f})"
        assert rows == {"dense": greedy_text(base, prompt, 4), label: section9_text(on_base, prompt, 4)}
        seen.add(rows[label])
    assert len(seen) == 2  # the two routers continue differently, so each row is its own model's


def test_mismatched_base_model_from_cli(run_dir: Path, tiny_model_dir: Path) -> None:
    qwen = tiny_model("qwen2")
    routed = RoutedModel(qwen, Schedule.uniform(0.2, 4), RouterSpec())
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(qwen, "tiny-qwen2")), run_dir)
    result = cli("run", "--model", str(tiny_model_dir), "--router", str(run_dir), "--prompt", "w1 w2")
    assert_clean_error(result, 2, "made for 'tiny-qwen2'")


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["run", "--model", "/no/such/dir"], "model path not found"),
        (["run", "--model", "/tmp/none.gguf"], "GGUF file not found"),
        (["run", "--sparsity", "1.5"], "outside [0, s_max=0.9]"),
        (["run", "--max-new-tokens", "0"], "Invalid value for '--max-new-tokens'"),
        (["train"], "Missing option '--out'"),
        (["train", "--out", "/tmp/never-written", "--no-such-option"], "No such option: --no-such-option"),
        (["generate", "/tmp", "--prompt", "p", "--max-new-tokens", "many"], "Invalid value for '--max-new-tokens'"),
        (["no-such-command"], "No such command 'no-such-command'"),
        (["export", "/tmp", "--out", "/tmp/never-written", "--engine", "trt"], "pip install 'ftp-deploy[trt]'"),
    ],
)
def test_bad_input_is_one_line(args: list[str], fragment: str) -> None:
    result = cli(*args)
    assert_clean_error(result, 2, fragment)
    assert len(result.stderr.splitlines()) == 1 and result.stdout == ""
    if "Invalid value" in fragment or "Missing" in fragment or "No such" in fragment:
        command = "ftp-deploy" if args[0] == "no-such-command" else f"ftp-deploy {args[0]}"
        assert result.stderr.rstrip().endswith(f"(see: {command} --help)")  # click's usage block, in one pointer


def heavy_modules_after(script: str, *argv: str) -> list[str]:
    """Runs `script` in a fresh interpreter; the heavy modules loaded by its end."""
    check = f"{script}\nimport json, sys\nprint(json.dumps(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", check, *argv], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return list(json.loads(result.stdout.splitlines()[-1]))


def test_importing_the_cli_loads_no_heavy_module() -> None:
    assert heavy_modules_after("import ftp_deploy.cli") == []


def test_help_and_usage_errors_load_no_heavy_module(tmp_path: Path) -> None:
    out = str(tmp_path / "never-written")
    argvs = [
        ["--help"],
        *([command, "--help"] for command in ("run", "train", "info", "eval", "export", "verify")),
        ["train", "--out", out, "--steps", "abc"],
        ["train", "--out", out, "--sparsity", "1.5"],
        ["export", str(tmp_path), "--out", out, "--engine", "foo"],
        ["export", str(tmp_path), "--out", out, "--engine", "trt", "--min-shape", "a"],
        ["export", str(tmp_path), "--out", out, "--quantize", "int3"],
        ["verify", str(tmp_path), "--seq-lens", "a,b"],
    ]
    script = (
        "import json, sys\nfrom ftp_deploy.cli import main\n"
        "codes = [main(argv) for argv in json.loads(sys.argv[1])]\n"
        "assert codes == [0] * 7 + [2] * 6, codes"
    )
    assert heavy_modules_after(script, json.dumps(argvs)) == []
    assert not (tmp_path / "never-written").exists()


def test_train_help_shows_the_config_defaults() -> None:
    result = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    train, search, losses = TrainConfig(), SearchConfig(), LossWeights()
    defaults = {
        "--seq-len": DataConfig().seq_len,
        "--steps": train.steps,
        "--batch-size": train.batch_size,
        "--lr": train.lr,
        "--checkpoint-every": train.checkpoint_every,
        "--search-batch": train.search_batch,
        "--scored": train.scored,
        "--s-max": DEFAULT_S_MAX,
        "--ga-population": search.population,
        "--ga-generations": search.generations,
        "--ga-mutation-sigma": search.mutation_sigma,
        "--finetune-generations": FINETUNE_SEARCH.generations,
        "--guide-weight": losses.guide,
        "--guide-decay": losses.guide_decay,
        "--sparsity-weight": losses.sparsity,
        "--distill-weight": losses.distill,
    }
    for option, value in defaults.items():
        line = next(line for line in result.output.splitlines() if f" {option} " in line)
        assert f"[default: {value}]" in line, (option, line)
    assert "[default: smollm2-135m]" in text and "[default: 0.3]" in text and "[required]" in text


# The README's exit-code table, class by class: 2 for bad input, 1 for what failed after the input
# was accepted. Written out, not derived from the class tree, so moving a class in the tree fails here.
README_EXIT_CODES = {
    "FtpDeployError": 1,
    "UsageError": 2,
    "ModelLoadError": 2,
    "UnsupportedArchitectureError": 2,
    "ConfigError": 2,
    "ArtifactError": 2,
    "BaseModelMismatchError": 2,
    "PromptError": 2,
    "PrefillOnlyExportError": 2,
    "CacheMismatchError": 2,
    "CacheCapacityError": 2,  # a generation longer than its in-place cache: bad input
    "DataError": 2,
    "MissingDependencyError": 2,
    "OptionalDependencyError": 2,
    "DeviceMemoryError": 2,
    "UnsupportedExportError": 2,
    "OutputFolderError": 2,
    "PlanCompatibilityError": 2,
    "ShapeOutOfProfileError": 2,
    "PluginMissingError": 2,
    "ParityError": 1,
    "ExportValidationError": 1,
    "StorageError": 1,
    "RankFailure": 1,
    "ServerError": 1,
    "ExportError": 1,
    "EngineBuildError": 1,
    "OnnxParseError": 1,
    "EngineLoadError": 1,
}


def error_classes() -> list[type[errors.FtpDeployError]]:
    return [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.FtpDeployError)]


def test_every_error_class_has_its_readme_exit_code() -> None:
    assert sorted(c.__name__ for c in error_classes()) == sorted(README_EXIT_CODES)


@pytest.mark.parametrize("error", error_classes(), ids=lambda c: c.__name__)
def test_exit_codes_are_the_readmes(
    error: type[errors.FtpDeployError], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Each class, raised inside a command, ends the CLI with the README's code and one line."""
    instance = error.__new__(error)
    Exception.__init__(instance, "planted")

    def fail(run_dir: Path) -> None:
        raise instance

    monkeypatch.setattr("ftp_deploy.summary.summarize_artifact", fail)
    code = cli_module.main(["info", "/nowhere"])
    assert code == README_EXIT_CODES[error.__name__]
    assert capsys.readouterr().err == "error: planted\n"


def test_an_interrupt_is_exit_130(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(run_dir: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("ftp_deploy.summary.summarize_artifact", interrupted)
    assert cli_module.main(["info", "/nowhere"]) == 130
    assert "aborted" in capsys.readouterr().err


REMOTE_CODE = '''
from pathlib import Path
from transformers import LlamaForCausalLM

Path(__file__).with_name("remote-code-ran").write_text("yes")


class PlantedForCausalLM(LlamaForCausalLM):
    """A model class shipped with the checkpoint: transformers runs this file only when code is trusted."""
'''


def test_remote_code_in_a_checkpoint_runs_only_with_trust_remote_code(tmp_path: Path) -> None:
    folder = tmp_path / "remote"
    tiny_model().save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    (folder / "planted.py").write_text(REMOTE_CODE)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "planted.PlantedForCausalLM"}
    (folder / "config.json").write_text(json.dumps(config))
    run = [sys.executable, "-m", "ftp_deploy.cli", "run", "--model", str(folder), "--prompt", "w1"]
    # transformers runs a checkpoint's module from its copy under HF_HOME: keep that copy in tmp_path too.
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf")}
    for trusted in (False, True):
        argv = [*run, "--trust-remote-code"] if trusted else run
        done = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, env=env)
        assert done.returncode == 0, done.stderr
        assert bool(list(tmp_path.rglob("remote-code-ran"))) == trusted, f"trusted={trusted}"
