"""The generator graph as ONNX Runtime optimized it, its weights prepacked on disk: one packed copy in memory.

In one session over generator.onnx (exporters/merge.py) the prefill branch's and the decode branch's
MatMul kernels each pack a copy of every weight they read, so the weights are held twice; with
prepacking off they are held once, and computed from unpacked (measured on SmolLM2 fp32, 1024-token
prompt: decode 15% slower, prefill 7%). ONNX Runtime can also save the optimized graph with each
weight's packed blob in its data file (`session.save_external_prepacked_constant_initializers`);
a session over that file maps the blobs from disk, one per weight, shared by the kernels of both
branches: the packed speed with one copy (measured: 27 ms/token decode and 1062 MiB after a
1024-token generation, against 35 ms and 1143 MiB unpacked, 27 ms and 1409 MiB packed per branch).

The packed layout is the machine's MLAS kernels' and the file is ORT's own, so the copy lives under the
cache root (ftp_deploy/cache_dir.py), named by the graph's and weights' sha256, ONNX Runtime's version
and the CPU. The first open writes it (4 s at 135M; the data file holds the weights and their blobs,
about twice the export's), in a hidden folder renamed into place; a disk that cannot hold it leaves
generation on the unpacked graph. The four most recently used copies are kept.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import os
import platform
import shutil
from pathlib import Path

import onnxruntime as ort
from onnxruntime.capi.onnxruntime_pybind11_state import Fail, RuntimeException

from ftp_deploy.cache_dir import cache_root, write_folder
from ftp_deploy.engines.onnx_runtime import SessionOptionsLoader

PREPACKED_FILE = "generator.prepacked.onnx"
PREPACKED_DATA = "generator.prepacked.data"
# Copies kept: each is about twice its export's weights, so the least recently used beyond these go.
KEPT_COPIES = 4


def prepacked_folder(identity: str) -> Path:
    """The cache folder of the graph whose sha256s are `identity`, for this ONNX Runtime and this CPU."""
    key = "|".join((identity, ort.__version__, platform.machine(), _cpu()))
    return cache_root() / "ort-prepacked" / hashlib.sha256(key.encode()).hexdigest()[:24]


def prepacked_graph(graph: Path, identity: str) -> Path | None:
    """The prepacked copy of `graph` (its sha256s `identity`), written on first use; None where it cannot be."""
    folder = prepacked_folder(identity)
    copy = folder / PREPACKED_FILE
    if copy.is_file():
        _touch(folder)
        return copy
    # ORT raises its own errors for a full disk.
    if write_folder(folder, lambda staging: _save_optimized(graph, staging / PREPACKED_FILE), (Fail, RuntimeException)):
        evict_stale(folder.parent)
        return copy
    return copy if copy.is_file() else None  # another process may have put its copy in place meanwhile


def evict_stale(root: Path, kept: int = KEPT_COPIES) -> list[Path]:
    """Remove the copies under `root` beyond the `kept` most recently used; returns those removed."""
    copies = [path for path in root.iterdir() if path.is_dir() and not path.name.startswith(".")]
    copies.sort(key=lambda path: path.stat().st_mtime, reverse=True)
    for stale in copies[kept:]:
        shutil.rmtree(stale, ignore_errors=True)
    return copies[kept:]


def _touch(folder: Path) -> None:
    with contextlib.suppress(OSError):  # a read-only cache still serves
        os.utime(folder)


def _save_optimized(graph: Path, target: Path) -> None:
    options = SessionOptionsLoader(threads=1)()
    options.optimized_model_filepath = str(target)
    options.add_session_config_entry("session.optimized_model_external_initializers_file_name", PREPACKED_DATA)
    options.add_session_config_entry("session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    options.add_session_config_entry("session.save_external_prepacked_constant_initializers", "1")
    ort.InferenceSession(str(graph), sess_options=options, providers=["CPUExecutionProvider"])
    _return_freed_memory()


def _return_freed_memory() -> None:
    """Hand the writing session's freed heap back to the OS: glibc keeps it otherwise, and the process would
    go on holding the two packed copies' worth of memory the copy saves (measured: 830 MiB at 135M fp32)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def _cpu() -> str:
    """The CPU's model and instruction-set flags (what MLAS picks its kernels, and so its packing, by)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return platform.processor()
    wanted = ("model name", "flags", "Features", "CPU part")
    lines = [line for line in text.split("\n\n", 1)[0].splitlines() if line.split(":")[0].strip() in wanted]
    return ";".join(lines) or platform.processor()
