"""--device, --dtype, --device-map and --checkpoint-activations on the CPU: the same numbers as before,
clear one-line refusals where the machine cannot do what was asked."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ftp_deploy import cli
from ftp_deploy.errors import ConfigError, DeviceMemoryError, MissingDependencyError, UsageError
from ftp_deploy.evaluation.pipeline import evaluate
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.formats.eval_results import EvalResults
from ftp_deploy.formats.export_manifest import ExportedArtifact
from ftp_deploy.formats.record import to_json
from ftp_deploy.formats.verify_report import VerifyReport
from ftp_deploy.models import load_base_model
from ftp_deploy.placement import CPU, Placement, memory_errors, resolve_placement
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.pipeline import run_training
from ftp_deploy.training.trainer import new_router
from tests.conftest import random_batch
from tests.test_eval_command import data_dir, save_run  # noqa: F401  (data_dir is a fixture)
from tests.test_export_command import make_run
from tests.test_train_run import settings, text_file  # noqa: F401  (text_file is a fixture)

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
COMMANDS = {
    "run": ["run"],
    "train": ["train", "--out", "{tmp}/never"],
    "eval": ["eval", "{tmp}/run"],
    "verify": ["verify", "{tmp}/art"],
    "export": ["export", "{tmp}/run", "--out", "{tmp}/never"],
    "generate": ["generate", "{tmp}/run", "--prompt", "w1"],
}


def test_auto_and_cpu_resolve_to_the_cpu_here() -> None:
    expected = "cuda:0" if torch.cuda.is_available() else "cpu"
    assert resolve_placement("auto") == Placement(expected)
    assert resolve_placement("cpu", "bf16") == Placement("cpu", "bf16")
    assert resolve_placement("auto", "fp16", "auto") == Placement(expected, "fp16", "auto")


def test_where_a_gpu_is_seen_auto_takes_it_and_cpu_keeps_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """On a CPU machine --device cpu and the default are the same placement; this is where they differ."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)  # each process of a run makes its own current
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_placement("auto") == Placement("cuda:1")
    assert resolve_placement("cpu") == Placement("cpu")
    assert resolve_placement("cuda:0") == Placement("cuda:0")


@pytest.mark.parametrize(
    ("device", "dtype", "device_map", "error", "fragment"),
    [
        ("tpu", "fp32", None, UsageError, "unknown --device 'tpu'"),
        ("cpu", "fp8", None, ConfigError, "unknown dtype 'fp8'"),
        ("auto", "fp32", "balanced", ConfigError, "unknown device map 'balanced'"),
        ("cpu", "fp32", "auto", UsageError, "leave --device at auto"),
    ],
)
def test_bad_placements(device: str, dtype: str, device_map: str | None, error: type, fragment: str) -> None:
    with pytest.raises(error, match=fragment):
        resolve_placement(device, dtype, device_map)


@NO_CUDA
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_a_gpu_is_a_missing_dependency(device: str) -> None:
    with pytest.raises(MissingDependencyError, match=f"--device {device}: no CUDA GPU here"):
        resolve_placement(device)


@NO_CUDA
@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_refuses_cuda_without_one_in_one_line(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [arg.format(tmp=tmp_path) for arg in COMMANDS[command]]
    assert cli.main([*argv, "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --device cuda: no CUDA GPU here") and "\n" not in err
    assert not (tmp_path / "never").exists()


def test_out_of_gpu_memory_is_one_line_naming_what_lowers_it(
    tmp_path: Path, tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    message = "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.19 GiB of which ..."

    def exhausted(*args: object, **kwargs: object) -> None:
        raise torch.cuda.OutOfMemoryError(message)

    monkeypatch.setattr("ftp_deploy.training.pipeline.load_token_data", exhausted)
    code = cli.main(["train", "--model", str(tiny_model_dir), "--out", str(tmp_path / "run"), "--device", "cpu"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "Traceback" not in err
    err = err.splitlines()[-1]  # the lines before it are the progress of the phases that ran
    assert err.startswith("error: CUDA out of memory. Tried to allocate 2.00 GiB; use less memory with")
    assert "--checkpoint-activations" in err and "--dtype bf16" in err and "--device-map auto" in err
    with pytest.raises(DeviceMemoryError, match="use less memory with --x"), memory_errors("--x"):
        raise torch.cuda.OutOfMemoryError("")


def test_device_map_auto_on_the_cpu_gives_the_same_numbers(tiny_model_dir: Path) -> None:
    plain = load_base_model(str(tiny_model_dir))
    mapped = load_base_model(str(tiny_model_dir), Placement("cpu", "fp32", "auto"))
    ids, mask = random_batch(2, 40, "left")
    with torch.no_grad():
        assert torch.equal(plain.model(ids, attention_mask=mask).logits, mapped.model(ids, attention_mask=mask).logits)
        for spec in (RouterSpec(kind="static"), RouterSpec()):
            torch.manual_seed(3)
            a = RoutedModel(plain.model, Schedule.uniform(0.3, 4), spec)
            torch.manual_seed(3)
            b = RoutedModel(mapped.model, Schedule.uniform(0.3, 4), spec)
            assert torch.equal(a(ids, mask).logits, b(ids, mask).logits)


def test_bf16_weights_keep_the_router_and_its_logits_fp32(tiny_model_dir: Path) -> None:
    loaded = load_base_model(str(tiny_model_dir), Placement("cpu", "bf16"))
    assert {p.dtype for p in loaded.model.parameters()} == {torch.bfloat16}
    routed = RoutedModel(loaded.model, Schedule.uniform(0.3, 4), RouterSpec())
    ids, mask = random_batch(2, 30, "left")
    out = routed(ids, mask, mode="masked", gate_gradient=True)
    assert out.logits.dtype == torch.bfloat16 and bool(torch.isfinite(out.logits).all())
    assert routed.router is not None and {p.dtype for p in routed.router.parameters()} == {torch.float32}
    assert {t.dtype for t in out.router_logits} == {torch.float32}
    out.logits.float().square().mean().backward()
    assert all(p.grad is not None and bool(torch.isfinite(p.grad).all()) for p in routed.router.parameters())


def test_checkpointed_blocks_give_the_same_loss_and_router_gradients(tiny_model_dir: Path) -> None:
    base = load_base_model(str(tiny_model_dir)).model
    ids, mask = random_batch(2, 40, "left")
    found = []
    for checkpointed in (False, True):
        router = new_router(0)
        schedule = Schedule.uniform(0.3, 4)
        routed = RoutedModel(base, schedule, RouterSpec(), router=router, checkpoint_blocks=checkpointed)
        out = routed(ids, mask, mode="masked", gate_gradient=True)
        loss = out.logits.square().mean() + 1e-3 * sum(raw.sum() for raw in out.router_logits)
        loss.backward()
        found.append((float(loss.detach()), [p.grad.clone() for p in router.parameters() if p.grad is not None]))
    (loss_a, grads_a), (loss_b, grads_b) = found
    assert loss_a == loss_b and len(grads_a) == 4
    assert all(torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True))


def test_training_with_a_device_map_and_checkpointing_gives_the_same_run(
    tiny_model_dir: Path,
    text_file: Path,  # noqa: F811
    tmp_path: Path,
    single_thread: None,
) -> None:
    plain = run_training(settings(tiny_model_dir, text_file), tmp_path / "plain")
    other = run_training(
        settings(tiny_model_dir, text_file),
        tmp_path / "other",
        placement=Placement("cpu", "fp32", "auto"),
        checkpoint_activations=True,
    )
    assert plain.phases.finetune is not None and other.phases.finetune is not None
    assert other.phases.finetune.best_thousandths == plain.phases.finetune.best_thousandths
    assert other.heldout == plain.heldout
    assert (plain.placement, other.placement) == (CPU, Placement("cpu", "fp32", "auto"))
    router_a = (tmp_path / "plain" / "router.safetensors").read_bytes()
    assert (tmp_path / "other" / "router.safetensors").read_bytes() == router_a


def eval_numbers(results: EvalResults) -> dict[str, object]:
    return {key: value for key, value in to_json(results).items() if key not in ("wall_seconds", "settings")}


def test_eval_on_cpu_and_device_map_auto_match_the_default_and_bf16_runs(
    tmp_path: Path,
    tiny_model_dir: Path,
    data_dir: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    run = save_run(tmp_path / "run", tiny_model_dir)
    tasks = f"mc:{data_dir / 'mc.jsonl'},ppl:{data_dir / 'text.txt'}"
    common = {"tasks": tasks, "baselines": "static", "data_dir": data_dir, "seq_len": 32, "scored_tokens": 8}
    common["limit"] = 4
    default = evaluate(run, report=tmp_path / "default", **common).results
    mapped = evaluate(run, report=tmp_path / "mapped", device_map="auto", **common).results
    assert eval_numbers(mapped) == eval_numbers(default)
    argv = [str(run), "--tasks", tasks, "--baselines", "static", "--data-dir", str(data_dir), "--seq-len", "32"]
    argv += ["--scored-tokens", "8"]
    for options, folder in ((["--device", "cpu"], "cpu"), (["--device", "cpu", "--dtype", "bf16"], "bf16")):
        assert cli.main(["eval", *argv, "--limit", "4", "--report", str(tmp_path / folder), *options]) == 0
    capsys.readouterr()
    on_cpu = EvalResults.read(tmp_path / "cpu")
    assert eval_numbers(on_cpu) == eval_numbers(default)
    assert on_cpu.settings.placement == CPU
    bf16 = EvalResults.read(tmp_path / "bf16")
    assert bf16.settings.placement is not None and bf16.settings.placement.dtype == "bf16"
    assert bf16.model.weights_sha256 != default.model.weights_sha256
    assert list(bf16.methods) == list(default.methods)
    ppl_task = f"ppl:{data_dir / 'text.txt'}"
    for name, method in bf16.methods.items():
        # bf16 keeps 8 bits of mantissa: the perplexity moves, by little (the same windows in fp32 as reference).
        ppl = method.tasks[ppl_task].ppl_scored
        fp32_ppl = default.methods[name].tasks[ppl_task].ppl_scored
        assert ppl is not None and fp32_ppl is not None
        assert ppl != fp32_ppl and abs(ppl / fp32_ppl - 1) < 0.005, (name, ppl, fp32_ppl)  # seen: 1e-4


def test_run_on_cpu_prints_what_it_did_before_and_runs_in_bf16(
    tiny_model_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from ftp_deploy.generation.compare import compare_dense_routed

    prompt = "w1 w2 w3 w4 w5 w6 w7 w8"
    before = compare_dense_routed(prompt, str(tiny_model_dir), 0.3, None, 4)
    on_cpu = compare_dense_routed(prompt, str(tiny_model_dir), 0.3, None, 4, placement=resolve_placement("cpu"))
    assert [(r.name, r.text) for r in on_cpu] == [(r.name, r.text) for r in before]
    argv = ["run", "--model", str(tiny_model_dir), "--prompt", prompt, "--max-new-tokens", "3"]
    code = cli.main([*argv, "--device", "cpu", "--dtype", "bf16"])
    out = " ".join(capsys.readouterr().out.split())  # the table title wraps at the console's width
    assert code == 0 and "(cpu, bf16)" in out and "dense" in out


@pytest.mark.slow  # two exports and two verifies: over two minutes on two shared cores
def test_export_and_verify_with_their_reference_on_the_cpu_match_the_default(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path, kind="learned")
    default = export_onnx(run, tmp_path / "default").manifest.validation
    assert cli.main(["export", str(run), "--out", str(tmp_path / "art"), "--device", "cpu"]) == 0
    assert ExportedArtifact.open(tmp_path / "art").manifest.validation == default
    verify = ["verify", str(tmp_path / "art"), "--seq-lens", "", "--device", "cpu"]
    assert cli.main([*verify, "--report", str(tmp_path / "on-cpu")]) == 0
    assert cli.main([*verify[:-2], "--report", str(tmp_path / "before")]) == 0
    capsys.readouterr()
    on_cpu, before = (VerifyReport.read(tmp_path / name) for name in ("on-cpu", "before"))
    assert on_cpu.parity == before.parity and on_cpu.parity.passed
    assert on_cpu.reference_placement == CPU
