"""Weight-only quantization of SmolLM2's exports (`export --quantize`): sizes, speed and quality.

For the routed (static router, uniform sparsity) and the dense model, at fp32, int4 and int8:

- file sizes of the `--with-past` export (both graphs and their one weight file);
- prefill time of a `--prompt-len` prompt and decode ms per token after it (the median step of
  `--decode-steps` greedy steps), batch 1, through engines.onnx_generation: every export once per
  round, in one process, the order reversed every other round, medians over `--runs` rounds;
- quality: held-out KL to the fp32 dense model (PyTorch) and top-1 agreement with it, over the scored
  positions (ftp_deploy.fidelity) of `--windows` wikitext-2 test windows, each file run as shipped
  (all-position exports), next to onnxruntime-genai's int4 (and fp32) build of the same weights.

    pip install 'ftp-deploy[bench]'   # onnxruntime-genai, for its builder
    python benchmarks/quantization.py --json quantization.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import wikitext_windows, write_json
from generation import BENCH_EXTRA, save_hf_folder

from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.engines.onnx_generation import OnnxGenerator
from ftp_deploy.engines.onnx_runtime import SessionFromOnnx, SessionOptionsLoader
from ftp_deploy.engines.widen import cpu_runnable
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.fidelity import SCORED_POSITIONS, Fidelity, scored_logits, scored_targets
from ftp_deploy.models import load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule

PRECISIONS = ("fp32", "int4", "int8")
GRAPHS = ("routed", "dense")
Logits = Callable[[np.ndarray], np.ndarray]  # input_ids [1, T] -> logits [1, T, vocab]


def export(work: Path, graph: str, precision: str, with_past: bool) -> Path:
    """One export of the run in `work` (made once, then reused)."""
    folder = work / f"{graph}-{precision}-{'past' if with_past else 'all'}"
    if not (folder / "manifest.json").is_file():
        start = time.perf_counter()
        quantize = None if precision == "fp32" else precision
        dense = graph == "dense"
        export_onnx(work / "run", folder, dense=dense, with_past=with_past, quantize=quantize, overwrite=True)
        print(f"export {folder.name}: {time.perf_counter() - start:.1f} s", flush=True)
    return folder


def genai_build(hf_dir: Path, out: Path, precision: str) -> Path:
    """onnxruntime-genai's builder, `-p precision -e cpu`, run once into `out`."""
    if not (out / "genai_config.json").is_file():
        start = time.perf_counter()
        command = [sys.executable, "-m", "onnxruntime_genai.models.builder", "-i", str(hf_dir), "-o", str(out)]
        subprocess.run([*command, "-p", precision, "-e", "cpu"], check=True, capture_output=True)
        print(f"onnxruntime-genai builder -p {precision}: {time.perf_counter() - start:.1f} s", flush=True)
    return out


def folder_mib(folder: Path, names: tuple[str, ...]) -> float:
    return sum((folder / name).stat().st_size for name in names if (folder / name).is_file()) / 2**20


def ours_logits(folder: Path, threads: int, fp32_arithmetic: bool = False) -> Logits:
    """An all-position export's logits; `fp32_arithmetic`: its MatMulNBits at accuracy_level 0 (verify's copy),
    which separates the cost of the rounded weights from that of the shipped int8 activations."""
    source = cpu_runnable(folder / "model.onnx", "fp32", quantized=True) if fp32_arithmetic else folder / "model.onnx"
    session = SessionFromOnnx(source, options=SessionOptionsLoader(threads=threads))()

    def run(ids: np.ndarray) -> np.ndarray:
        return session.run(["logits"], {"input_ids": ids, "attention_mask": np.ones_like(ids)})[0]

    return run


def genai_logits(folder: Path, threads: int) -> Logits:
    """genai's graph run directly with an empty cache: its logits at every prompt position."""
    session = SessionFromOnnx(folder / "model.onnx", options=SessionOptionsLoader(threads=threads))()
    inputs = session.get_inputs()
    head_size = json.loads((folder / "genai_config.json").read_text())["model"]["decoder"]["head_size"]

    def run(ids: np.ndarray) -> np.ndarray:
        feed: dict[str, np.ndarray] = {}
        for spec in inputs:
            if spec.name == "input_ids":
                feed[spec.name] = ids
            elif spec.name == "attention_mask":
                feed[spec.name] = np.ones_like(ids)
            elif spec.name == "position_ids":
                feed[spec.name] = np.arange(ids.shape[1], dtype=np.int64)[None]
            else:  # past_key_values.N.key/value [batch, kv_heads, past (0), head_size (a symbolic dim)]
                feed[spec.name] = np.zeros((ids.shape[0], spec.shape[1], 0, head_size), np.float32)
        return session.run(["logits"], feed)[0]

    return run


def quality(reference: Any, windows: torch.Tensor, candidates: dict[str, Callable[[], Logits]]) -> dict[str, Any]:
    """Held-out KL to the fp32 dense model and top-1 agreement of each candidate, one loaded at a time."""
    with torch.inference_mode():
        dense = [reference(window[None]).logits for window in windows]
    figures = {}
    for name, make in candidates.items():
        logits_of = make()
        total = Fidelity()
        for window, dense_logits in zip(windows, dense, strict=True):
            ids = window[None]
            logits = torch.from_numpy(logits_of(ids.numpy()))
            scored = scored_logits(logits, SCORED_POSITIONS)
            total.add(scored_logits(dense_logits, SCORED_POSITIONS), scored, scored_targets(ids, SCORED_POSITIONS))
        summary = total.summary()
        ratio = summary.perplexity / summary.dense_perplexity
        figures[name] = {"kl": summary.kl, "top1": summary.top1_agreement, "perplexity_ratio": ratio}
        print(f"quality {name}: KL {summary.kl:.4f}, top-1 {summary.top1_agreement:.2%}", flush=True)
    return figures


def speed(folders: dict[str, Path], prompt: np.ndarray, steps: int, runs: int, threads: int) -> dict[str, Any]:
    """Prefill ms and median decode ms/token of each with-past export, interleaved, medians over rounds."""
    generators = {name: OnnxGenerator.open(folder, threads=threads) for name, folder in folders.items()}
    for generator in generators.values():  # first-call costs out of the timings
        generator.generate(prompt[:, :32], max_new_tokens=4, eos_token_ids=[])
    times: dict[str, dict[str, list[float]]] = {name: {"prefill_ms": [], "decode_ms": []} for name in generators}
    order = list(generators)
    for round_index in range(runs):
        for name in order if round_index % 2 == 0 else order[::-1]:
            generator = generators[name]
            start = time.perf_counter()
            logits = generator.prefill(prompt, max_new_tokens=steps)
            times[name]["prefill_ms"].append((time.perf_counter() - start) * 1e3)
            step_ms = []
            for _ in range(steps):
                token = logits.argmax(-1)[:, None]
                start = time.perf_counter()
                logits = generator.decode(token)
                step_ms.append((time.perf_counter() - start) * 1e3)
            times[name]["decode_ms"].append(statistics.median(step_ms))
    return {
        name: {key: statistics.median(values) for key, values in figures.items()} | {"per_round": figures}
        for name, figures in times.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--prompt-len", type=int, default=1024)
    parser.add_argument("--decode-steps", type=int, default=32)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--windows", type=int, default=16, help="held-out windows for the quality figures")
    parser.add_argument("--window-len", type=int, default=512)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip", default="", help="comma-separated parts to skip: speed, quality")
    parser.add_argument("--work-dir", type=Path, default=None, help="keep (and reuse) the exports and genai builds")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    skip = set(filter(None, args.skip.split(",")))
    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="quantization-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_base_model(args.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    schedule = Schedule.uniform(args.sparsity, model.config.num_hidden_layers)
    routed = RoutedModel(model, schedule, RouterSpec(kind="static"))
    if not (work / "run").is_dir():
        save_artifact(RoutedArtifact.from_model(routed, loaded.ref), work / "run")
    print(f"work dir {work}; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs", flush=True)

    past = {f"{g} {p}": export(work, g, p, with_past=True) for g in GRAPHS for p in PRECISIONS}
    graph_files = ("model.onnx", "decoder.onnx", "generator.onnx", "model.onnx.data")
    sizes = {name: folder_mib(folder, graph_files) for name, folder in past.items()}
    results: dict[str, Any] = {"sizes_mib": sizes}
    if "speed" not in skip:
        prompt = wikitext_windows(tokenizer, 1, args.prompt_len).numpy()
        load_before = os.getloadavg()
        results["speed"] = speed(past, prompt, args.decode_steps, args.runs, args.threads)
        results["speed_load_average"] = {"before": load_before, "after": os.getloadavg()}
    if "quality" not in skip:
        try:
            import onnxruntime_genai  # noqa: F401
        except ImportError as err:
            raise SystemExit(f"the onnxruntime-genai builds need onnxruntime-genai: {BENCH_EXTRA}") from err
        hf_dir = work / "hf"
        if not (hf_dir / "config.json").is_file():
            save_hf_folder(model, tokenizer, hf_dir)
        candidates: dict[str, Callable[[], Logits]] = {}
        for graph in GRAPHS:
            for precision in PRECISIONS:
                if (graph, precision) != ("dense", "fp32"):  # the reference itself
                    folder = export(work, graph, precision, with_past=False)
                    candidates[f"{graph} {precision}"] = partial(ours_logits, folder, args.threads)
                if graph == "dense":
                    for precision in PRECISIONS[1:]:
                        folder = export(work, graph, precision, with_past=False)
                        name = f"{graph} {precision}, fp32 arithmetic"
                        candidates[name] = partial(ours_logits, folder, args.threads, fp32_arithmetic=True)
        for precision in ("fp32", "int4"):
            folder = genai_build(hf_dir, work / f"genai-{precision}", precision)
            sizes[f"genai {precision}"] = folder_mib(folder, ("model.onnx", "model.onnx.data"))
            candidates[f"genai dense {precision}"] = partial(genai_logits, folder, args.threads)
        windows = wikitext_windows(tokenizer, args.windows, args.window_len)
        results["quality"] = quality(model, windows, candidates)
    for name, size in sizes.items():
        print(f"size {name}: {size:.1f} MiB")
    for name, figures in results.get("speed", {}).items():
        print(f"speed {name}: prefill {figures['prefill_ms']:.0f} ms, decode {figures['decode_ms']:.2f} ms/token")
    write_json(
        args.json,
        {
            "model": args.model,
            "sparsity": args.sparsity,
            "router": "static",
            "prompt_len": args.prompt_len,
            "decode_steps": args.decode_steps,
            "runs": args.runs,
            "threads": args.threads,
            "windows": args.windows,
            "window_len": args.window_len,
            "scored_positions": SCORED_POSITIONS,
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            **results,
        },
    )


if __name__ == "__main__":
    main()
