"""The Python API: `ftp_deploy.train/evaluate/export/verify/generate`, the commands' names, options and defaults."""

from __future__ import annotations

import inspect
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

import ftp_deploy
from ftp_deploy.evaluation.command import evaluate as eval_command
from ftp_deploy.exporters.command import export as export_command
from ftp_deploy.formats.eval_results import EvalResults
from ftp_deploy.formats.export_manifest import read_manifest
from ftp_deploy.formats.verify_report import VerifyReport
from ftp_deploy.generation.command import generate as generate_command
from ftp_deploy.serving.command import serve as serve_command
from ftp_deploy.serving.options import ServeOptions
from ftp_deploy.training.command import train as train_command
from ftp_deploy.verification.command import verify as verify_command
from tests.conftest import PIPELINE_PROMPT, random_words
from tests.test_cli import heavy_modules_after
from tests.test_eval_command import data_dir  # noqa: F401  (a fixture)

# The command's parameters that are not options of the library call: what it is given
# positionally (a folder, a prompt), and how the command prints (stream).
POSITIONAL = {"run_dir", "out", "art_dir", "source_dir", "prompt", "stream", "sources"}
# Options the command line spells as text and the library as values.
SPELLED = {"attention_priors": lambda text: tuple(float(x) for x in text.split(",")), "seq_lens": None}
COMMANDS = [
    (train_command, ftp_deploy.TrainOptions),
    (eval_command, ftp_deploy.EvalOptions),
    (export_command, ftp_deploy.ExportOptions),
    (verify_command, ftp_deploy.VerifyOptions),
    (generate_command, ftp_deploy.GenerateOptions),
    (serve_command, ServeOptions),  # a server until Ctrl-C: serving.server.start_server in Python
]


def test_importing_the_api_loads_no_heavy_module() -> None:
    script = "import ftp_deploy\n" + "\n".join(f"ftp_deploy.{name}" for name in ftp_deploy.__all__ if "Options" in name)
    assert heavy_modules_after(script) == []
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        ftp_deploy.trian  # noqa: B018


@pytest.mark.parametrize(("command", "options"), COMMANDS, ids=lambda v: getattr(v, "__name__", ""))
def test_each_command_is_its_options_with_their_defaults(command: Any, options: type) -> None:
    """Every option of the command is a field of the same name and default; every field is an option."""
    declared = {field.name: getattr(options(), field.name) for field in fields(options)}
    parameters = {
        name: parameter.default
        for name, parameter in inspect.signature(command).parameters.items()
        if name not in POSITIONAL
    }
    assert set(parameters) == set(declared)
    for name, default in parameters.items():
        spell = SPELLED.get(name, "as is")
        if spell is None:  # verify's --seq-lens: comma-separated lengths
            assert default == ",".join(map(str, declared[name])), name
        elif callable(spell):
            assert spell(default) == declared[name], name
        else:
            assert default == declared[name], name


def test_the_pipeline_from_python(tmp_path: Path, tiny_model_dir: Path, data_dir: Path) -> None:  # noqa: F811
    """train -> evaluate -> export --with-past -> verify -> generate in both runtimes, each a typed result."""
    text = tmp_path / "text.txt"
    text.write_text(random_words(1200, 0))
    run, art = tmp_path / "run", tmp_path / "art"
    small: dict[str, Any] = {"seq_len": 24, "scored": 8, "steps": 4, "search_batch": 2, "validation_batch": 4}
    small |= {"ga_population": 4, "ga_generations": 2, "finetune_generations": 1, "attention_priors": (0.0, 8.0)}
    state = ftp_deploy.train(run, model=str(tiny_model_dir), data=str(text), **small)
    assert state is not None and state.finished and state.heldout is not None and "trained" in state.heldout

    evaluation = ftp_deploy.evaluate(
        run, ftp_deploy.EvalOptions(tasks=f"mc:{data_dir / 'mc.jsonl'}", data_dir=data_dir), seq_len=32, scored_tokens=8
    )
    assert isinstance(evaluation.results, EvalResults) and evaluation.results.settings.seq_len == 32
    assert EvalResults.read(run / "eval").methods.keys() == evaluation.results.methods.keys()

    exported = ftp_deploy.export(str(run), str(art), with_past=True)  # paths as text, as a script has them
    assert exported.out == art and exported.manifest == read_manifest(art)
    assert exported.manifest.with_past is not None and set(exported.manifest.graphs) == {"prefill", "decode"}

    verified = ftp_deploy.verify(str(art), seq_lens=(), report=tmp_path / "verify")
    assert verified.parity.passed and verified.decode is not None and verified.decode.passed
    assert VerifyReport.read(tmp_path / "verify", "no report").parity.passed

    options = ftp_deploy.GenerateOptions(max_new_tokens=6)
    onnx = ftp_deploy.generate(art, PIPELINE_PROMPT, options)
    torch_text = ftp_deploy.generate(run, PIPELINE_PROMPT, options, runtime="torch")
    assert (onnx.runtime, torch_text.runtime) == ("onnxrt", "torch")
    assert onnx.generation.token_ids == torch_text.generation.token_ids
    assert onnx.text == torch_text.text and onnx.generation.new_tokens == 6


def test_options_are_checked_when_made_and_fields_by_name() -> None:
    with pytest.raises(ftp_deploy.FtpDeployError, match="--top-p"):
        ftp_deploy.GenerateOptions(do_sample=True, top_p=0.0)
    with pytest.raises(ftp_deploy.FtpDeployError, match="--num-processes"):
        ftp_deploy.TrainOptions(num_processes=0)
    with pytest.raises(TypeError, match="with_pasts"):
        ftp_deploy.export(Path("run"), Path("out"), with_pasts=True)
