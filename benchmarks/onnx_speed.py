"""Prefill wall time of SmolLM2 in ONNX Runtime (CPU): dense vs routed exports, and PyTorch eager.

Exports the dense model and the routed one (static router, uniform sparsity 0.3), both with
last-position logits, with `ftp-deploy export`'s own pipeline (validated and smoke-run), then
times both in ONNX Runtime and both in PyTorch eager on the same inputs (batch 1), runs
interleaved so drift on a shared machine hits all alike. The ideal speedup is the FLOP ratio's
inverse (decoder blocks; ftp_deploy.flops.flop_ratio).

    python benchmarks/onnx_speed.py --json onnx_speed.json
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import interleaved_times, summarize, write_json

from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.engines.onnx_runtime import OrtRunner, SessionFromOnnx, SessionOptionsLoader
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.flops import flop_ratio
from ftp_deploy.formats.export_manifest import MODEL_FILE, manifest_mismatches, read_manifest
from ftp_deploy.models import load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule

TARGET_LENGTH, TARGET_SPEEDUP, TARGET_OF_IDEAL = 1024, 1.3, 0.85
IMPLEMENTATIONS = ("ort dense", "ort routed", "torch dense", "torch routed")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--seq-lens", default="256,512,1024,2048")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per implementation and length (>= 5)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the run and both exports here")
    parser.add_argument(
        "--reuse-exports", action="store_true", help="time the exports already in --work-dir (their manifests checked)"
    )
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    if args.runs < 5:
        parser.error("--runs must be at least 5")

    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="onnx-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    loaded = load_base_model(args.model)
    model = loaded.model
    schedule = Schedule.uniform(args.sparsity, model.config.num_hidden_layers)
    routed = RoutedModel(model, schedule, RouterSpec(kind="static"))
    exports = {graph: work / graph for graph in ("dense", "routed")}
    if args.reuse_exports:
        _check_reusable(exports, schedule)
    else:
        save_artifact(RoutedArtifact.from_model(routed, loaded.ref), work / "run")
        for graph, folder in exports.items():
            export_onnx(work / "run", folder, dense=graph == "dense", last_token_logits=True, overwrite=True)
    print(f"exports in {work}; load average before timing {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")

    options = SessionOptionsLoader(threads=args.threads)
    runners = {
        graph: OrtRunner(SessionFromOnnx(folder / MODEL_FILE, options=options)) for graph, folder in exports.items()
    }
    results: dict[str, Any] = {}
    generator = torch.Generator().manual_seed(0)
    print(_header())
    with runners["dense"], runners["routed"], torch.inference_mode():
        for seq_len in (int(t) for t in args.seq_lens.split(",")):
            ids = torch.randint(100, model.config.vocab_size, (1, seq_len), generator=generator)
            feed = {"input_ids": ids.numpy(), "attention_mask": np.ones_like(ids.numpy())}
            fns = {
                "ort dense": partial(runners["dense"].infer, feed, False),
                "ort routed": partial(runners["routed"].infer, feed, False),
                "torch dense": partial(model, ids, logits_to_keep=1),
                "torch routed": partial(routed, ids, logits_to_keep=1),
            }
            times = interleaved_times(fns, args.runs)
            row = {name: summarize(times[name]) for name in IMPLEMENTATIONS}
            results[str(seq_len)] = _figures(row, 1 / flop_ratio(model.config, schedule, seq_len))
            print(_line(seq_len, results[str(seq_len)]))
    at_target = results.get(str(TARGET_LENGTH))
    targets = None
    if at_target is not None:
        targets = {
            f"speedup_at_{TARGET_LENGTH}_ge_{TARGET_SPEEDUP}": at_target["speedup"] >= TARGET_SPEEDUP,
            f"of_ideal_at_{TARGET_LENGTH}_ge_{TARGET_OF_IDEAL}": at_target["of_ideal"] >= TARGET_OF_IDEAL,
            "ort_routed_faster_than_torch_routed_everywhere": all(r["vs_torch_routed"] > 1 for r in results.values()),
        }
        print("targets:", ", ".join(f"{name} {'met' if met else 'MISSED'}" for name, met in targets.items()))
    write_json(
        args.json,
        {
            "model": args.model,
            "sparsity": args.sparsity,
            "router": "static",
            "batch": 1,
            "logits": "last position",
            "runs": args.runs,
            "threads": args.threads,
            "cpu": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(),
            "load_average_after": os.getloadavg()[0],
            "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__,
            "results": results,
            "targets": targets,
        },
    )


def _check_reusable(exports: dict[str, Path], schedule: Schedule) -> None:
    for graph, folder in exports.items():
        problems = manifest_mismatches(folder)
        manifest = read_manifest(folder)
        if manifest.schedule.sparsity_thousandths != schedule.thousandths:
            problems.append(f"schedule {list(manifest.schedule.sparsity_thousandths)}")
        if manifest.graph != graph or not manifest.last_token_logits:
            problems.append(f"a {manifest.graph} graph with last_token_logits={manifest.last_token_logits}")
        if problems:
            raise SystemExit(f"cannot reuse {folder}: {'; '.join(problems)}")


def _figures(row: dict[str, dict[str, float]], ideal: float) -> dict[str, Any]:
    medians = {name: stats["median_s"] for name, stats in row.items()}
    speedup = medians["ort dense"] / medians["ort routed"]
    return {
        **row,
        "speedup": speedup,
        "ideal_speedup": ideal,
        "of_ideal": speedup / ideal,
        "vs_torch_routed": medians["torch routed"] / medians["ort routed"],
    }


def _header() -> str:
    names = "".join(f"{name + ' ms':>16}" for name in IMPLEMENTATIONS)
    return f"{'T':>6}{names}{'speedup':>9}{'ideal':>7}{'of ideal':>9}{'vs torch':>9}"


def _line(seq_len: int, figures: dict[str, Any]) -> str:
    times = "".join(f"{figures[name]['median_s'] * 1e3:>16.1f}" for name in IMPLEMENTATIONS)
    return (
        f"{seq_len:>6}{times}{figures['speedup']:>8.2f}x{figures['ideal_speedup']:>6.2f}x"
        f"{figures['of_ideal']:>9.0%}{figures['vs_torch_routed']:>8.2f}x"
    )


if __name__ == "__main__":
    main()
