"""Generation speed of SmolLM2: dense vs routed, PyTorch vs ONNX Runtime, against onnxruntime-genai's dense model.

One process, runs interleaved (each implementation once per round) so drift on a shared machine
hits all alike. Prompts are windows of held-out text (wikitext-2 test); batch 4 is left padded
(rows of 8/8, 7/8, 6/8 and 5/8 of the prompt length). Every implementation makes exactly
`--new-tokens` tokens (no end-of-sequence stop), greedy:

- torch dense / torch routed: transformers' `generate` with its DynamicCache / with the per-layer
  compacted RoutedCache (static router, uniform sparsity, FTP_SPEC section 9);
- ort dense / ort routed: ftp-deploy's --with-past exports through engines.onnx_generation, in fp32
  and (the "int4" rows) exported with --quantize int4;
- genai fp32 / genai int4: the graphs onnxruntime-genai's model builder makes from the same weights
  (`-p fp32` / `-p int4`, CPU), driven by its own Generator: the dense ONNX LLM a user would
  otherwise pick.

Per implementation: time to first token (prefill and first pick), decode ms per token, end to end,
KV-cache bytes when generation ended (genai's: computed from its cache shape, since it keeps the
cache inside its generator), and the process's peak resident memory during the run (sampled
every 5 ms) with its rise over the resident memory before the run.

    pip install 'ftp-deploy[bench]'   # onnxruntime-genai
    python benchmarks/generation.py --json generation.json
    python benchmarks/generation.py --prompt-lens 256 --new-tokens 16 --batches 1 --runs 1   # a quick run
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from functools import partial

from common import wikitext_windows, write_json
from memory import MIB, RssSampler
from transformers import DynamicCache

from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.engines.onnx_generation import OnnxGenerator
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.generation.cache import RoutedCache
from ftp_deploy.generation.model import RoutedForCausalLM
from ftp_deploy.generation.settings import GenerationSettings
from ftp_deploy.generation.timed import Generation, generate_onnx, timed_generate
from ftp_deploy.models import load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule

BENCH_EXTRA = "pip install 'ftp-deploy[bench]'"
IMPLEMENTATIONS = (
    "torch dense",
    "torch routed",
    "ort dense",
    "ort routed",
    "ort dense int4",
    "ort routed int4",
    "genai fp32",
    "genai int4",
)
# Each ftp-deploy export row, its graph and its --quantize; each genai row, its builder precision.
EXPORTS = {
    "ort dense": ("dense", None),
    "ort routed": ("routed", None),
    "ort dense int4": ("dense", "int4"),
    "ort routed int4": ("routed", "int4"),
}
GENAI = {"genai fp32": "fp32", "genai int4": "int4"}


@dataclass
class Measured:
    ttft_ms: float
    decode_ms_per_token: float | None
    end_to_end_ms: float
    new_tokens: int
    kv_bytes: int
    peak_rss_mib: float
    rss_rise_mib: float
    tokens: list[list[int]]


def _measured(generation: Generation, sampler: RssSampler) -> Measured:
    return Measured(
        ttft_ms=generation.ttft_s * 1e3,
        decode_ms_per_token=generation.decode_ms_per_token,
        end_to_end_ms=generation.total_s * 1e3,
        new_tokens=generation.new_tokens,
        kv_bytes=generation.kv_bytes,
        peak_rss_mib=sampler.peak / MIB,
        rss_rise_mib=sampler.rise_mib,
        tokens=generation.token_ids,
    )


def left_padded_batch(windows: torch.Tensor, batch: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch` rows of the windows; row r keeps its last (8 - r) / 8 of the tokens, left padded."""
    ids = windows[:batch].clone()
    mask = torch.ones_like(ids)
    length = ids.shape[1]
    for row in range(1, batch):
        mask[row, : length * row // 8] = 0
    return ids.masked_fill(mask == 0, pad_id), mask


def save_hf_folder(model: Any, tokenizer: Any, folder: Path) -> None:
    """The model as a plain Hugging Face folder (the builder's input). A model read from GGUF is marked
    quantized and refuses save_pretrained, so a fresh model of its config takes its weights."""
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(model.state_dict())
    fresh.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def require_genai() -> Any:
    """The onnxruntime_genai module, or one clear line naming the extra that installs it."""
    try:
        import onnxruntime_genai as og
    except ImportError as err:
        raise SystemExit(f"the onnxruntime-genai baseline needs onnxruntime-genai: {BENCH_EXTRA}") from err
    return og


def genai_build(hf_dir: Path, out: Path, precision: str = "fp32") -> None:
    """onnxruntime-genai's CPU build (`-p fp32|int4`, the builder's defaults otherwise) of the model in
    `hf_dir` into `out`, unless it is there already."""
    if (out / "genai_config.json").is_file():
        return
    start = time.perf_counter()
    command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out)]
    subprocess.run([*command, "-p", precision, "-e", "cpu"], check=True, capture_output=True)
    print(f"onnxruntime-genai model builder ({precision}): {time.perf_counter() - start:.1f} s")


def genai_model(hf_dir: Path, out: Path, threads: int, precision: str = "fp32") -> Any:
    """onnxruntime-genai's CPU build of the model in `hf_dir` (built once into `out`), its threads set."""
    og = require_genai()
    genai_build(hf_dir, out, precision)
    config = og.Config(str(out))
    config.overlay(f'{{"model": {{"decoder": {{"session_options": {{"intra_op_num_threads": {threads}}}}}}}}}')
    return og.Model(config)


def run_torch(
    model: Any, make_cache: Callable[[], Any], pad: int, ids: torch.Tensor, mask: torch.Tensor, n: int
) -> Generation:
    """transformers' generate with a fresh cache, no end-of-sequence stop."""
    return timed_generate(model, ids, mask, make_cache(), GenerationSettings(max_new_tokens=n), pad, None)


def run_ort(generator: OnnxGenerator, ids: torch.Tensor, mask: torch.Tensor, n: int) -> Generation:
    """ftp-deploy's ONNX Runtime loop over a --with-past export, no end-of-sequence stop."""
    return generate_onnx(generator, ids.numpy(), mask.numpy(), GenerationSettings(max_new_tokens=n), [])


def run_genai(model: Any, kv_per_token: int, ids: torch.Tensor, mask: torch.Tensor, new_tokens: int) -> Generation:
    """onnxruntime-genai's own loop: append the prompt, then one generate_next_token per new token."""
    import onnxruntime_genai as og

    batch, length = ids.shape
    params = og.GeneratorParams(model)
    params.set_search_options(
        max_length=length + new_tokens, min_length=length + new_tokens, do_sample=False, batch_size=batch
    )
    start = time.perf_counter()
    generator = og.Generator(model, params)
    generator.append_tokens(ids.numpy().astype(np.int32))
    times = []
    for _ in range(new_tokens):
        generator.generate_next_token()
        times.append(time.perf_counter())
    total = time.perf_counter() - start
    tokens = [list(map(int, generator.get_sequence(row)[length:])) for row in range(batch)]
    # Keys and values of every fed token: the prompt rows as padded, plus every new token but the last.
    kv = kv_per_token * batch * (length + new_tokens - 1)
    decode = (times[-1] - times[0]) * 1e3 / (len(times) - 1) if len(times) > 1 else None
    return Generation(tokens, length, times[0] - start, decode, total, kv)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--prompt-lens", default="512,1024,2048")
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--runs", type=int, default=3, help="rounds per prompt length and batch (medians reported)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--implementations", default=",".join(IMPLEMENTATIONS))
    parser.add_argument("--work-dir", type=Path, default=None, help="keep (and reuse) the exports and genai model")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    lengths = [int(t) for t in args.prompt_lens.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    chosen = [name.strip() for name in args.implementations.split(",")]
    unknown = set(chosen) - set(IMPLEMENTATIONS)
    if unknown or args.runs < 1 or args.new_tokens < 2 or max(batches) > 8:
        parser.error(f"unknown implementations {sorted(unknown)}" if unknown else "--runs >= 1, --new-tokens >= 2")
    if any(name in chosen for name in GENAI):
        try:
            import onnxruntime_genai  # noqa: F401
        except ImportError:
            parser.error(f"the onnxruntime-genai baseline needs onnxruntime-genai: {BENCH_EXTRA}")

    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="generation-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_base_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    config = model.config
    schedule = Schedule.uniform(args.sparsity, config.num_hidden_layers)
    routed = RoutedModel(model, schedule, RouterSpec(kind="static"))
    wrapper = RoutedForCausalLM(routed).eval()
    pad = int(tokenizer.pad_token_id)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_per_token = 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * 4  # fp32 keys + values

    runners: dict[str, Callable[[torch.Tensor, torch.Tensor, int], Generation]] = {}
    if "torch dense" in chosen:
        runners["torch dense"] = partial(run_torch, model, DynamicCache, pad)
    if "torch routed" in chosen:
        runners["torch routed"] = partial(run_torch, wrapper, RoutedCache, pad)
    exports = {name: spec for name, spec in EXPORTS.items() if name in chosen}
    if exports:
        save_artifact(RoutedArtifact.from_model(routed, loaded.ref), work / "run")
    for name, (graph, quantize) in exports.items():
        folder = work / name.replace(" ", "-")
        if not (folder / "manifest.json").is_file():
            start = time.perf_counter()
            export_onnx(work / "run", folder, dense=graph == "dense", with_past=True, quantize=quantize, overwrite=True)
            print(f"export --with-past ({name}): {time.perf_counter() - start:.1f} s")
        generator = OnnxGenerator.open(folder, threads=args.threads)
        runners[name] = partial(run_ort, generator)
    hf_dir = work / "hf"
    for name, precision in GENAI.items():
        if name in chosen:
            if not (hf_dir / "config.json").is_file():
                save_hf_folder(model, tokenizer, hf_dir)
            og_model = genai_model(hf_dir, work / f"genai-{precision}", args.threads, precision)
            runners[name] = partial(run_genai, og_model, kv_per_token)

    print(f"work dir {work}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; {args.threads} threads")
    warm_ids = wikitext_windows(tokenizer, 1, 32)
    for runner in runners.values():  # first-call costs (allocations, kernel choice) out of the timings
        runner(warm_ids, torch.ones_like(warm_ids), 4)

    results: list[dict[str, Any]] = []
    for length in lengths:
        windows = wikitext_windows(tokenizer, max(batches), length)
        for batch in batches:
            ids, mask = left_padded_batch(windows, batch, pad)
            per_run: dict[str, list[Measured]] = {name: [] for name in runners}
            for _ in range(args.runs):
                for name, runner in runners.items():
                    with torch.inference_mode(), RssSampler() as sampler:
                        generation = runner(ids, mask, args.new_tokens)
                    per_run[name].append(_measured(generation, sampler))
            figures = _medians(per_run)
            row = {"prompt_len": length, "batch": batch, "implementations": figures}
            row["comparisons"] = _comparisons(figures, per_run)
            results.append(row)
            print(_table(row))
    targets = _targets(results)
    for name, value in targets.items():
        print(f"target {name}: {value}")
    write_json(
        args.json,
        {
            "model": args.model,
            "sparsity": args.sparsity,
            "router": "static",
            "new_tokens": args.new_tokens,
            "runs": args.runs,
            "threads": args.threads,
            "greedy": True,
            "stops_at_eos": False,
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_after": os.getloadavg()[0],
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "onnxruntime_genai": _version("onnxruntime-genai"),
            "kv_bytes_note": "genai: computed from its cache shape (fp32, every fed token), not read back",
            "results": results,
            "targets": targets,
        },
    )


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _medians(per_run: dict[str, list[Measured]]) -> dict[str, dict[str, Any]]:
    medians = {}
    for name, runs in per_run.items():
        decode = [r.decode_ms_per_token for r in runs if r.decode_ms_per_token is not None]
        medians[name] = {
            "ttft_ms": statistics.median(r.ttft_ms for r in runs),
            "decode_ms_per_token": statistics.median(decode) if decode else None,
            "end_to_end_ms": statistics.median(r.end_to_end_ms for r in runs),
            "new_tokens": runs[0].new_tokens,
            "kv_bytes": runs[0].kv_bytes,
            "peak_rss_mib": max(r.peak_rss_mib for r in runs),
            "rss_rise_mib": max(r.rss_rise_mib for r in runs),
            "runs": [{k: v for k, v in asdict(r).items() if k != "tokens"} for r in runs],
        }
    return medians


def _comparisons(figures: dict[str, dict[str, Any]], per_run: dict[str, list[Measured]]) -> dict[str, Any]:
    """Routed against dense of the same runtime and against genai; greedy tokens torch routed vs ort routed."""
    out: dict[str, Any] = {}
    for runtime in ("torch", "ort"):
        dense, routed = figures.get(f"{runtime} dense"), figures.get(f"{runtime} routed")
        if dense and routed:
            out[f"{runtime}_routed_kv_vs_dense"] = routed["kv_bytes"] / dense["kv_bytes"]
            out[f"{runtime}_routed_ttft_speedup"] = dense["ttft_ms"] / routed["ttft_ms"]
    torch_dense, torch_routed = figures.get("torch dense"), figures.get("torch routed")
    if torch_dense and torch_routed and torch_dense["decode_ms_per_token"] and torch_routed["decode_ms_per_token"]:
        # Speed (tokens/s) of the routed decode relative to the dense one: above 1 is faster.
        out["torch_routed_decode_speed_vs_dense"] = (
            torch_dense["decode_ms_per_token"] / torch_routed["decode_ms_per_token"]
        )
    # Each routed row against the genai build of the same precision: speed-ups above 1 are faster,
    # the memory ratio below 1 is smaller. Memory is the rise while generating: every implementation
    # lives in this one process, so its peak holds them all (benchmarks/prefill.py measures each
    # runtime's whole footprint in a process of its own).
    for name, genai_name in (
        ("ort routed", "genai fp32"),
        ("torch routed", "genai fp32"),
        ("ort routed int4", "genai int4"),
    ):
        genai, ours = figures.get(genai_name), figures.get(name)
        if genai and ours:
            key = f"{name.replace(' ', '_')}_vs_{genai_name.replace(' ', '_')}"
            out[f"{key}_end_to_end"] = genai["end_to_end_ms"] / ours["end_to_end_ms"]
            out[f"{key}_ttft"] = genai["ttft_ms"] / ours["ttft_ms"]
            out[f"{key}_rss_rise"] = ours["rss_rise_mib"] / genai["rss_rise_mib"]
            if genai["decode_ms_per_token"] and ours["decode_ms_per_token"]:
                out[f"{key}_decode"] = genai["decode_ms_per_token"] / ours["decode_ms_per_token"]
    if "torch routed" in per_run and "ort routed" in per_run:
        out["greedy_tokens_torch_routed_eq_ort_routed"] = all(
            a.tokens == b.tokens for a, b in zip(per_run["torch routed"], per_run["ort routed"], strict=True)
        )
    return out


def _targets(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets where this run measured them (batch 1; None where not measured)."""

    def at(length: int, key: str) -> Any:
        row = next((r for r in results if r["prompt_len"] == length and r["batch"] == 1), None)
        return None if row is None else row["comparisons"].get(key)

    def check(value: Any, limit: float, above: bool = True) -> dict[str, Any] | None:
        return None if value is None else {"value": value, "met": value >= limit if above else value <= limit}

    equal = [e for r in results if (e := r["comparisons"].get("greedy_tokens_torch_routed_eq_ort_routed")) is not None]
    targets: dict[str, Any] = {}
    # Decode ms/token <= 0.95x genai's is a speed ratio >= 1 / 0.95.
    for ours, theirs in (("ort_routed", "genai_fp32"), ("ort_routed_int4", "genai_int4")):
        key = f"{ours}_vs_{theirs}"
        targets[f"{key}_decode_1024_le_0.95x"] = check(at(1024, f"{key}_decode"), 1 / 0.95)
        targets[f"{key}_end_to_end_1024_ge_1.25"] = check(at(1024, f"{key}_end_to_end"), 1.25)
        targets[f"{key}_ttft_1024_ge_1.5"] = check(at(1024, f"{key}_ttft"), 1.5)
        targets[f"{key}_rss_rise_1024_le_1.1"] = check(at(1024, f"{key}_rss_rise"), 1.1, above=False)
    targets["torch_routed_decode_speed_vs_dense_1024_ge_0.95"] = check(
        at(1024, "torch_routed_decode_speed_vs_dense"), 0.95
    )
    targets["greedy_torch_eq_ort_routed"] = all(equal) if equal else None
    return targets


def _table(row: dict[str, Any]) -> str:
    lines = [f"prompt {row['prompt_len']} tokens, batch {row['batch']}:"]
    lines.append(f"  {'':16}{'TTFT ms':>10}{'decode ms/tok':>15}{'total ms':>11}{'KV MiB':>9}{'peak RSS MiB':>14}")
    for name, f in row["implementations"].items():
        decode = f"{f['decode_ms_per_token']:.1f}" if f["decode_ms_per_token"] is not None else "-"
        lines.append(
            f"  {name:16}{f['ttft_ms']:>10.0f}{decode:>15}{f['end_to_end_ms']:>11.0f}"
            f"{f['kv_bytes'] / 2**20:>9.1f}{f['peak_rss_mib']:>14.0f}"
        )
    lines += [f"  {key}: {value:.3f}" if isinstance(value, float) else f"  {key}: {value}"
              for key, value in row["comparisons"].items()]  # fmt: skip
    return "\n".join(lines)


if __name__ == "__main__":
    main()
