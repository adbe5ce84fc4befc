"""`ftp-deploy generate` and `run` with cached generation; the decode check of verify; bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoTokenizer

from ftp_deploy.artifacts import RoutedArtifact, load_routed, save_artifact
from ftp_deploy.cli import main
from ftp_deploy.comparison.decode import check_decode
from ftp_deploy.engines.onnx_generation import OnnxGenerator
from ftp_deploy.formats.verify_report import Tolerance, VerifyReport
from ftp_deploy.generation.reference import decode_step, routed_prefill
from ftp_deploy.generation.settings import GenerationSettings
from ftp_deploy.generation.timed import generate_dense, generate_routed
from ftp_deploy.models import model_ref_for
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import random_batch, tiny_model, tiny_tokenizer
from tests.test_cli import (
    HEAVY_MODULES,
    assert_clean_error,
    assert_one_error_line,
    cli,
    heavy_modules_after,
    run_continuations,
    section9_text,
    section9_tokens,
)

PROMPT = "w1 w2 w3 w4 w5 w6 w7 w8 w9 w10 w11 w12 w13 w14"
SCHEDULE = (0.1, 0.2, 0.3, 0.4)


def learned_run(folder: Path) -> tuple[Path, Path, RoutedModel]:
    """A learned-router run folder, the tiny base model's folder, and the routed model they make."""
    base = tiny_model()
    base.save_pretrained(folder / "base")
    tiny_tokenizer().save_pretrained(folder / "base")
    torch.manual_seed(3)
    routed = RoutedModel(base, Schedule.from_sparsities(list(SCHEDULE)), RouterSpec())
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, str(folder / "base"))), folder / "run")
    return folder / "run", folder / "base", routed


@pytest.fixture
def run_and_base(tmp_path: Path) -> tuple[Path, Path, RoutedModel]:
    return learned_run(tmp_path)


def in_process(capsys: pytest.CaptureFixture[str], *args: str | Path) -> tuple[int, str, str]:
    """The CLI's main in this process (no interpreter start-up): exit code, stdout, stderr."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return code, captured.out, captured.err


def test_generate_continues_as_the_section_9_reference(
    run_and_base: tuple[Path, Path, RoutedModel], capsys: pytest.CaptureFixture[str]
) -> None:
    run, _, routed = run_and_base
    plain = cli("generate", str(run), "--prompt", PROMPT, "--max-new-tokens", "6")
    assert plain.returncode == 0, plain.stderr
    assert plain.stdout.strip() == section9_text(routed, PROMPT, 6)
    assert "time to first token" in plain.stderr and "KV cache" in plain.stderr
    code, out, _ = in_process(capsys, "generate", run, "--prompt", PROMPT, "--max-new-tokens", "6", "--stream")
    assert code == 0 and out.strip() == plain.stdout.strip()


def test_transformers_sampling_is_seeded(run_and_base: tuple[Path, Path, RoutedModel]) -> None:
    _, _, routed = run_and_base
    ids = tiny_tokenizer()(PROMPT, return_tensors="pt").input_ids
    settings = GenerationSettings(max_new_tokens=8, do_sample=True, temperature=1.5, seed=7)
    runs = [generate_routed(routed, ids, torch.ones_like(ids), settings, 0, None).token_ids for _ in range(2)]
    other = generate_routed(routed, ids, torch.ones_like(ids), GenerationSettings(8, True, 1.5, 1.0, 8), 0, None)
    assert runs[0] == runs[1] and len(runs[0][0]) == 8
    assert other.token_ids != runs[0]


def test_routed_generate_times_and_caches_less_than_dense(single_thread: None) -> None:
    base = tiny_model()
    routed = RoutedModel(base, Schedule.uniform(0.3, 4), RouterSpec(kind="static"))
    ids, mask = random_batch(2, 40, "left")
    settings = GenerationSettings(max_new_tokens=5)
    dense = generate_dense(base, ids, mask, settings, 0, None)
    ours = generate_routed(routed, ids, mask, settings, 0, None)
    assert ours.token_ids == section9_tokens(routed, ids, mask, 5).tolist()
    assert dense.token_ids == base.generate(ids, attention_mask=mask, max_new_tokens=5, do_sample=False,
                                            pad_token_id=0, eos_token_id=None)[:, 40:].tolist()  # fmt: skip
    assert ours.ttft_s > 0 and ours.decode_ms_per_token is not None and ours.decode_ms_per_token > 0
    kept = sum(routed.schedule.kept(block, 40) for block in range(4))
    # Both caches end with 40 prompt + 4 fed-back tokens per block (the 5th token is never fed back).
    assert ours.kv_bytes / dense.kv_bytes == (kept + 4 * 4) / (4 * 44)


def test_run_reports_cached_generation_for_dense_and_routed(run_and_base: tuple[Path, Path, RoutedModel]) -> None:
    run, base_dir, routed = run_and_base
    result = subprocess.run(
        [sys.executable, "-m", "ftp_deploy.cli", "run", "--model", str(base_dir), "--router", str(run),
         "--prompt", PROMPT, "--max-new-tokens", "4"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    texts = run_continuations(result.stdout)
    rows = [[c.strip() for c in line.split("│")[1:-1]] for line in result.stdout.splitlines() if "│" in line]
    assert "first token ms" in result.stdout and "decode ms/token" in result.stdout
    dense, routed_row = (row for row in rows if row[0] in ("dense", "routed"))
    tokenizer = tiny_tokenizer()
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    dense_tokens = routed.base.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=0, eos_token_id=None)
    assert texts["dense"] == tokenizer.decode(dense_tokens[0, ids.shape[1] :], skip_special_tokens=True)
    assert texts[f"routed ({run}, mean sparsity 0.25)"] == section9_text(routed, PROMPT, 4)
    assert dense[4] == "1.00x" and float(routed_row[4].rstrip("x")) < 1
    said = re.search(r"Decode: routed ([\d.]+)x dense's time per token", result.stdout)
    assert said is not None  # the decode speed is said in words, whichever way it goes
    # The table rounds each time to 0.1 ms and the sentence its ratio to 0.01: the sentence lies in the
    # ratio's interval that rounding leaves (wide when a tiny model decodes in about 1 ms).
    routed_ms, dense_ms = float(routed_row[2]), float(dense[2])
    lowest, highest = (routed_ms - 0.05) / (dense_ms + 0.05), (routed_ms + 0.05) / max(dense_ms - 0.05, 1e-9)
    assert lowest - 0.005 <= float(said[1]) <= highest + 0.005


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["--prompt", "   "], "the prompt is empty"),
        (["--prompt", "w1", "--runtime", "cuda"], "unknown runtime 'cuda'"),
        (["--prompt", "w1", "--max-new-tokens", "0"], "--max-new-tokens must be >= 1"),
        (["--prompt", "w1", "--do-sample", "--temperature", "-1"], "--temperature must be > 0"),
        (["--prompt", "w1", "--do-sample", "--top-p", "2"], "--top-p must lie in (0, 1]"),
        (["--prompt", "w1", "--temperature", "0.7"], "apply with --do-sample only"),
        (["--prompt", "w1", "--max-new-tokens", "many"], "Invalid value for '--max-new-tokens'"),
        (["--prompt", "w1", "--threads", "0"], "--threads must be >= 1"),
    ],
)
def test_bad_options_are_one_line_before_any_model_loads(
    args: list[str], fragment: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert_one_error_line(err, fragment)
    assert list(tmp_path.iterdir()) == []


def test_usage_errors_load_no_heavy_module(tmp_path: Path) -> None:
    argvs = [["generate", "--help"], ["generate", str(tmp_path), "--prompt", ""],
             ["generate", str(tmp_path), "--prompt", "w1", "--top-p", "0"]]  # fmt: skip
    script = (
        "import json, sys\nfrom ftp_deploy.cli import main\n"
        "codes = [main(argv) for argv in json.loads(sys.argv[1])]\nassert codes == [0, 2, 2], codes"
    )
    assert set(heavy_modules_after(script, json.dumps(argvs))) & set(HEAVY_MODULES) == set()


def test_bad_folders_and_prompts_are_one_line(
    run_and_base: tuple[Path, Path, RoutedModel], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, base_dir, _ = run_and_base
    before = sorted(str(p) for p in tmp_path.rglob("*"))
    long_prompt = " ".join(f"w{i % 90}" for i in range(508))  # the tiny model has 512 positions
    cases = [
        ([base_dir, "--prompt", "w1"], "neither a run folder"),
        ([tmp_path / "nowhere", "--prompt", "w1"], "folder not found"),
        ([run, "--prompt", long_prompt, "--max-new-tokens", "8"], "that is 516, beyond the model's context of 512"),
        ([run, "--prompt", "w1", "--chat"], "no chat template"),
        ([run, "--prompt", "w1", "--threads", "2"], "--runtime onnxrt only"),
    ]
    for args, fragment in cases:
        code, _, err = in_process(capsys, "generate", *args)
        assert code == 2 and len(err.splitlines()) == 1, err
        assert_one_error_line(err, fragment)
    assert sorted(str(p) for p in tmp_path.rglob("*")) == before


class TorchCachedDecoder:
    """PyTorch's own cached decode as a CachedDecoder, optionally with its logits or keys perturbed."""

    def __init__(self, routed: RoutedModel, logits_error: float = 0.0, key_error: float = 0.0) -> None:
        self.routed, self.logits_error, self.key_error = routed, logits_error, key_error
        self.cache = None

    def prefill(self, input_ids: np.ndarray, attention_mask: np.ndarray, max_new_tokens: int) -> np.ndarray:
        result = routed_prefill(self.routed, torch.from_numpy(input_ids), torch.from_numpy(attention_mask))
        self.cache = result.cache
        return result.logits.numpy()

    def decode(self, token_ids: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            logits = decode_step(self.routed, torch.from_numpy(token_ids), self.cache).numpy()
        logits[:, 5] += self.logits_error
        return logits

    def cache_layers(self) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
        layers = [
            (k.numpy().copy(), v.numpy(), m.numpy())
            for (k, v, _), m in zip(self.cache, self.cache.slot_valid, strict=True)
        ]
        layers[2][0][0, 0, -1, 0] += self.key_error
        return layers


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_decode_check_passes_pytorchs_cached_decode_and_catches_errors(arch: str, single_thread: None) -> None:
    routed = RoutedModel(tiny_model(arch), Schedule.from_sparsities(list(SCHEDULE)), RouterSpec())
    ids, mask = random_batch(2, 23, "left")
    tolerance = Tolerance.for_dtype("fp32")
    good = check_decode(routed, TorchCachedDecoder(routed), ids, mask, 8, tolerance)
    assert good.passed and good.tokens_identical and good.cache_lengths_equal, good.failures
    assert good.logits_max_abs_diff <= 1e-4 and good.decode_median_ms > 0
    bad_logits = check_decode(routed, TorchCachedDecoder(routed, logits_error=0.5), ids, mask, 8, tolerance)
    assert not bad_logits.logits_passed and any("logits" in f for f in bad_logits.failures)
    bad_cache = check_decode(routed, TorchCachedDecoder(routed, key_error=0.5), ids, mask, 8, tolerance)
    assert bad_cache.logits_passed and not bad_cache.cache_passed
    assert any("cached keys/values" in f for f in bad_cache.failures)


@pytest.fixture
def with_past_export(default_pipeline: dict[str, Path]) -> tuple[Path, Path, RoutedModel]:
    """The default pipeline's run (a learned monotone router), its --with-past export and its routed model."""
    routed, _, _ = load_routed(default_pipeline["run"])
    return default_pipeline["run"], default_pipeline["art_past"], routed


def test_streamed_onnx_generation_is_the_same_text(with_past_export: tuple[Path, Path, RoutedModel]) -> None:
    _, art, routed = with_past_export
    onnx_run = cli("generate", str(art), "--prompt", PROMPT, "--max-new-tokens", "8", "--stream", "--threads", "1")
    assert onnx_run.returncode == 0, onnx_run.stderr
    assert onnx_run.stdout.strip() == section9_text(routed, PROMPT, 8)
    assert onnx_run.stderr.strip().startswith("onnxrt:")


def _generated(capsys: pytest.CaptureFixture[str], *args: str | Path) -> str:
    code, out, err = in_process(capsys, "generate", *args)
    assert code == 0, err
    return out.strip()


@pytest.mark.parametrize("runtime", ["torch", "onnxrt"])
def test_chat_wraps_the_prompt_in_the_tokenizers_template(
    with_past_export: tuple[Path, Path, RoutedModel], runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run, art, routed = with_past_export
    source = run if runtime == "torch" else art
    tokenizer = AutoTokenizer.from_pretrained(art)  # the export's copy, template included
    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": PROMPT}], add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    assert tokenizer.decode(ids[0]) == f"w1 w2 {PROMPT} w3 w4 w5"  # the template really wraps it
    done = cli("generate", str(source), "--prompt", PROMPT, "--max-new-tokens", "6", "--chat")
    assert done.returncode == 0, done.stderr
    expected = section9_tokens(routed, ids, torch.ones_like(ids), 6)[0]
    assert done.stdout.strip() == tokenizer.decode(expected, skip_special_tokens=True)
    assert f"{ids.shape[1]} prompt tokens" in done.stderr
    assert done.stdout.strip() != _generated(capsys, source, "--prompt", PROMPT, "--max-new-tokens", "6")


@pytest.mark.parametrize("runtime", ["torch", "onnxrt"])
def test_sampling_repeats_under_a_seed_and_differs_across_seeds_and_from_greedy(
    with_past_export: tuple[Path, Path, RoutedModel], runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    run, art, _ = with_past_export
    source = run if runtime == "torch" else art
    sample = [source, "--prompt", PROMPT, "--max-new-tokens", "10", "--do-sample", "--temperature", "1.5"]
    first, again, other = (_generated(capsys, *sample, "--seed", seed) for seed in ("1", "1", "2"))
    greedy = _generated(capsys, source, "--prompt", PROMPT, "--max-new-tokens", "10")
    assert first == again
    assert first != other and greedy not in (first, other)


def test_one_seed_samples_the_same_tokens_in_both_runtimes(
    with_past_export: tuple[Path, Path, RoutedModel], capsys: pytest.CaptureFixture[str]
) -> None:
    """Both runtimes draw through transformers' warpers from one seeded generator (generation/sampling)."""
    run, art, _ = with_past_export
    sample = ["--prompt", PROMPT, "--max-new-tokens", "10", "--do-sample", "--temperature", "1.5", "--top-p", "0.9"]
    for seed in ("1", "2"):
        assert _generated(capsys, run, *sample, "--seed", seed) == _generated(capsys, art, *sample, "--seed", seed)


def test_onnx_sampling_keeps_the_top_p_nucleus_and_follows_the_temperature(
    with_past_export: tuple[Path, Path, RoutedModel],
) -> None:
    _, art, _ = with_past_export
    generator = OnnxGenerator.open(art, threads=1)
    ids = tiny_tokenizer()(PROMPT, return_tensors="np").input_ids
    greedy = generator.generate(ids, max_new_tokens=10).tokens
    hot = [generator.generate(ids, max_new_tokens=10, do_sample=True, temperature=2.0, seed=s).tokens for s in (3, 4)]
    assert not np.array_equal(hot[0], hot[1]) and not np.array_equal(hot[0], greedy)
    # A nucleus of one token is the argmax; a near-zero temperature puts all the mass on it too.
    nucleus = generator.generate(ids, max_new_tokens=10, do_sample=True, top_p=1e-6, seed=3).tokens
    cold = generator.generate(ids, max_new_tokens=10, do_sample=True, temperature=1e-4, seed=3).tokens
    assert np.array_equal(nucleus, greedy) and np.array_equal(cold, greedy)


def test_onnx_bad_input_is_one_line(with_past_export: tuple[Path, Path, RoutedModel], tmp_path: Path) -> None:
    from dataclasses import replace

    from ftp_deploy.formats.export_manifest import DECODER_FILE, read_manifest, write_manifest

    run, art, _ = with_past_export
    prefill_only = tmp_path / "prefill-only"
    shutil.copytree(art, prefill_only)
    (prefill_only / DECODER_FILE).unlink()
    manifest = read_manifest(prefill_only)
    write_manifest(prefill_only, replace(manifest, graphs={"prefill": manifest.graphs["prefill"]}, with_past=None))
    before = sorted((p.name, p.stat().st_mtime_ns) for p in prefill_only.iterdir())
    assert_clean_error(cli("generate", str(prefill_only), "--prompt", "w1"), 2, "prefill-only export")
    assert sorted((p.name, p.stat().st_mtime_ns) for p in prefill_only.iterdir()) == before
    assert_clean_error(cli("generate", str(run), "--runtime", "onnxrt", "--prompt", "w1"), 2, "export it first")
    long_prompt = " ".join(f"w{i % 90}" for i in range(508))
    result = cli("generate", str(art), "--prompt", long_prompt, "--max-new-tokens", "8")
    assert_clean_error(result, 2, "beyond the exported model's context of 512 tokens")


def test_verify_checks_the_onnx_decode(with_past_export: tuple[Path, Path, RoutedModel], tmp_path: Path) -> None:
    from ftp_deploy.verification.verify import verify

    _, art, _ = with_past_export
    result = verify(art, seq_lens=[], report=tmp_path / "report", decode_steps=8, threads=1)
    assert result.passed and result.decode is not None, result.decode
    assert result.decode.tokens_identical and result.decode.cache_lengths_equal and result.decode.steps == 8
    assert result.decode.logits_max_abs_diff <= 1e-4 and result.decode.decode_median_ms > 0
    report = VerifyReport.read(tmp_path / "report")
    assert report.decode is not None and report.decode.passed
    assert "## Decode" in (tmp_path / "report" / "report.md").read_text()
