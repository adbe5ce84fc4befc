"""`make gpu-check`: everything that needs a CUDA GPU, in one call, into one JSON file.

Meant for a lent GPU machine whose image has torch with CUDA, triton, transformers, onnx and
onnxruntime but not this project installed, and no network. Sections, each recorded (with its
error, if it broke) as soon as it ends:

1. environment: versions, the GPU, and which of the project's imports are missing there;
2. tests: tests/test_gpu.py under pytest, in this process (Triton kernels on CUDA bit-exact against
   the reference, T=6000/K=4200 included; the routed forward on CUDA against the CPU in fp32, bf16
   and fp16; compact vs masked on CUDA; checkpointed training memory; the commands with --device cuda);
3. kernels: benchmarks/gpu_kernels.py at T=2048, no launch sweep (bit-exactness checks, a
   LLaMA-2-7B-shaped block dense vs routed) and the compaction kernels' share of the routed block;
4. memory: benchmarks/train_memory.py --measure (router training at the 7B shape, T=2048).

It runs from the source tree (the pipeline folders are imported as pyproject.toml's package-dir
maps them) with the image's Python; `--wheels DIR` first installs the wheels in DIR (pure-Python
dependencies the image lacks: `make gpu-wheels` downloads them) into a temporary folder. Without
a CUDA GPU every GPU section is recorded as skipped, "no CUDA GPU", and the exit status is 0.

    python benchmarks/gpu_check.py --json gpu-check.json [--wheels .gpu-wheels]

Exit status: 0 when every section that ran passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
NEEDED = (
    "torch", "transformers", "accelerate", "safetensors", "numpy", "typer", "rich", "triton", "pytest", "onnx",
    "onnxruntime", "onnxscript", "onnx_ir", "polygraphy", "gguf", "matplotlib",
)  # fmt: skip
NO_GPU = "skipped: no CUDA GPU"


def install_wheels(folder: Path) -> list[str]:
    """The wheels in `folder` into a fresh temporary folder at the front of sys.path; their names."""
    wheels = sorted(folder.glob("*.whl"))
    target = Path(tempfile.mkdtemp(prefix="gpu-check-site-"))
    command = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--target", str(target)]
    subprocess.run([*command, *map(str, wheels)], check=True)
    sys.path.insert(0, str(target))
    return [wheel.name for wheel in wheels]


def use_source_tree() -> str:
    """Import ftp_deploy from this tree, its pipeline folders mapped as pyproject.toml's package-dir says."""
    sys.path.insert(0, str(ROOT))
    if importlib.util.find_spec("ftp_deploy.plugins") is not None:
        return "installed"
    import tomllib

    import ftp_deploy

    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    for name, folder in mapping.items():
        if name == folder or "." not in name:
            continue
        spec = importlib.util.spec_from_file_location(
            name, ROOT / folder / "__init__.py", submodule_search_locations=[str(ROOT / folder)]
        )
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        setattr(ftp_deploy, name.rsplit(".", 1)[1], module)
    return "source tree (package-dir mapped)"


def environment() -> dict[str, Any]:
    import torch

    found: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "gpu_memory_gib": torch.cuda.get_device_properties(0).total_memory / 1024**3
        if torch.cuda.is_available()
        else None,
        "missing_modules": [name for name in NEEDED if importlib.util.find_spec(name) is None],
    }
    for name in ("transformers", "triton", "accelerate", "onnxruntime"):
        if importlib.util.find_spec(name) is not None:
            found[name] = getattr(__import__(name), "__version__", "?")
    return found


def gpu_tests(report_dir: Path) -> dict[str, Any]:
    import pytest

    junit = report_dir / "gpu-tests.xml"
    code = pytest.main([str(ROOT / "tests" / "test_gpu.py"), "-q", "-rs", "-p", "no:cacheprovider",
                        f"--junitxml={junit}", f"--rootdir={ROOT}"])  # fmt: skip
    suite = ET.parse(junit).getroot()
    suite = suite if suite.tag == "testsuite" else suite[0]
    cases = []
    for case in suite.iter("testcase"):
        outcome = next((child for child in case if child.tag in ("failure", "error", "skipped")), None)
        cases.append(
            {
                "test": case.get("name"),
                "seconds": float(case.get("time", 0)),
                "outcome": "passed" if outcome is None else outcome.tag,
                "message": None if outcome is None else (outcome.get("message") or "")[:500],
            }
        )
    counts = {kind: sum(c["outcome"] == kind for c in cases) for kind in ("passed", "failure", "error", "skipped")}
    return {"exit_code": int(code), "counts": counts, "cases": cases}


def kernels(report_dir: Path) -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_kernels

    path = report_dir / "gpu-kernels.json"
    code = gpu_kernels.main(["--seq-lens", "2048", "--runs", "20", "--no-sweep", "--json", str(path)])
    figures = json.loads(path.read_text())
    for row in figures.get("layer", []) if isinstance(figures.get("layer"), list) else []:
        compaction = row["compact_triton_ms"] + row["scatter_triton_ms"]
        row["compaction_share_of_routed_block"] = compaction / row["routed_ms"]
        row["compaction_share_of_dense_block"] = compaction / row["dense_layer_ms"]
    return {"exit_code": code, **figures}


def memory() -> dict[str, Any]:
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import train_memory

    shape = train_memory.Shape()
    return {
        "computed": train_memory.computed(shape, 2048, 1),
        "measured": train_memory.measure(shape, 2048, 1),
    }


def run_section(name: str, figures: dict[str, Any], fn: Callable[[], Any], path: Path | None) -> bool:
    began = time.perf_counter()
    try:
        figures[name] = fn()
        ok = True
    except Exception as exc:  # one broken section must not cost the others' figures on a lent GPU
        traceback.print_exc()
        figures[name] = {"error": repr(exc)}
        ok = False
    if isinstance(figures[name], dict):
        figures[name]["seconds"] = time.perf_counter() - began
    if path is not None:  # after every section, so a run cut short keeps what it measured
        path.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    return ok


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", type=Path, default=Path("gpu-check.json"))
    parser.add_argument("--wheels", type=Path, default=None, help="a folder of wheels to install first")
    args = parser.parse_args(argv)
    figures: dict[str, Any] = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if args.wheels is not None:
        figures["installed_wheels"] = install_wheels(args.wheels)
    figures["ftp_deploy_from"] = use_source_tree()
    import torch

    report_dir = args.json.resolve().parent
    report_dir.mkdir(parents=True, exist_ok=True)
    ok = run_section("environment", figures, environment, args.json)
    sections: list[tuple[str, Callable[[], Any]]] = [
        ("tests", lambda: gpu_tests(report_dir)),
        ("kernels", lambda: kernels(report_dir)),
        ("memory", memory),
    ]
    for name, fn in sections:
        if torch.cuda.is_available():
            ok = run_section(name, figures, fn, args.json) and ok
            ok = ok and figures[name].get("exit_code", 0) == 0
        else:
            figures[name] = NO_GPU
    args.json.write_text(json.dumps(figures, indent=2, default=str) + "\n", encoding="utf-8")
    print(json.dumps({k: v for k, v in figures.items() if k in ("environment", "ftp_deploy_from")}, default=str))
    print(f"gpu-check: {'no CUDA GPU: GPU sections skipped' if not torch.cuda.is_available() else 'done'}; "
          f"{'all passed' if ok else 'SOMETHING FAILED'}; figures in {args.json}")  # fmt: skip
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
