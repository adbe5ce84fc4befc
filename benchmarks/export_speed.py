"""Wall time of `ftp-deploy export --engine onnx` on SmolLM2, routed and dense, step by step.

Makes a run folder (learned router as initialised, uniform sparsity 0.3: the learned router's
block is the larger graph) and exports it twice through the command's own pipeline, as a user
would: base model load, graph export, onnx.checker, validation against PyTorch, smoke run and
manifest. Each step's wall time is recorded, and the totals are checked against the 60 s target.

The GGUF conversion cache (ftp_deploy.gguf_cache) is pointed at a fresh folder, so the first
load, which makes the run folder, is timed as a user's first command ("first_load_seconds");
the exports then load the converted copy, as every later command does.

    python benchmarks/export_speed.py --json export_speed.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import write_json

from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.gguf_cache import CACHE_ENV
from ftp_deploy.models import load_base_model
from ftp_deploy.progress import Advance
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule

TARGET_SECONDS = 60.0


class PhaseClock:
    """A Progress (ftp_deploy.progress) that records each phase's wall time instead of drawing it."""

    def __init__(self) -> None:
        self.phases: dict[str, float] = {}

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None = None, completed: int = 0) -> Iterator[Advance]:
        start = time.perf_counter()
        yield _ignore_advance
        self.phases[description] = time.perf_counter() - start

    def note(self, text: str) -> None:
        """Notes are not timed."""


def _ignore_advance(steps: int = 1, status: str = "") -> None:
    """Export phases are single steps."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sparsity", type=float, default=0.3)
    parser.add_argument("--router", choices=("learned", "static"), default="learned")
    parser.add_argument("--dtype", choices=("fp32", "fp16", "bf16"), default="fp32")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work-dir", type=Path, default=None, help="keep the run folder and both exports here")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="export-speed-"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ[CACHE_ENV] = str(Path(tempfile.mkdtemp(prefix="gguf-cache-", dir=work)))
    start = time.perf_counter()
    loaded = load_base_model(args.model)
    first_load = time.perf_counter() - start
    print(f"first load (GGUF read and converted): {first_load:.1f} s")
    schedule = Schedule.uniform(args.sparsity, loaded.model.config.num_hidden_layers)
    torch.manual_seed(0)
    routed = RoutedModel(loaded.model, schedule, RouterSpec(kind=args.router))
    save_artifact(RoutedArtifact.from_model(routed, loaded.ref), work / "run")
    del routed, loaded

    figures: dict[str, Any] = {
        "model": args.model,
        "router": args.router,
        "sparsity": args.sparsity,
        "dtype": args.dtype,
        "threads": args.threads,
        "cpus": os.cpu_count(),
        "load_average_before": os.getloadavg()[0],
        "first_load_seconds": first_load,
        "target_seconds": TARGET_SECONDS,
        "exports": {},
    }
    for graph in ("routed", "dense"):
        clock = PhaseClock()
        start = time.perf_counter()
        export_onnx(
            work / "run",
            work / graph,
            dtype=args.dtype,
            dense=graph == "dense",
            last_token_logits=True,
            overwrite=True,
            progress=clock,
        )
        total = time.perf_counter() - start
        figures["exports"][graph] = {"seconds": total, "steps": clock.phases, "meets_target": total <= TARGET_SECONDS}
        print(f"{graph}: {total:.1f} s")
        for step, seconds in clock.phases.items():
            print(f"    {seconds:6.1f} s  {step}")
    write_json(args.json, figures)


if __name__ == "__main__":
    main()
