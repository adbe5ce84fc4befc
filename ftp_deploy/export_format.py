"""The exported-artifact format, below both exporters/ and engines/: file and input names, manifest.json.

manifest.json says what was exported from what, and holds the sha256 of every file.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftp_deploy.fileio import atomic_write_json, read_format_json, sha256_file

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "ftp-deploy/onnx-export"
MANIFEST_VERSION = 1
# The graph inputs, both [batch, sequence] int64; the TensorRT optimization profile names them too.
INPUT_NAMES = ("input_ids", "attention_mask")
EXPORT_DTYPES = ("fp32", "fp16", "bf16")
# What ONNX Runtime's CPU provider has kernels for; a bf16 file runs there only widened to fp32.
CPU_NATIVE_DTYPES = ("fp32", "fp16")


def write_manifest(folder: Path, content: dict[str, Any]) -> dict[str, Any]:
    """Write `content` plus the hash of every other file in `folder`; returns what was written."""
    files = {path.name: sha256_file(path) for path in sorted(folder.iterdir()) if path.name != MANIFEST_FILE}
    manifest = {"format": MANIFEST_FORMAT, "format_version": MANIFEST_VERSION, **content, "files": files}
    atomic_write_json(folder / MANIFEST_FILE, manifest)
    return manifest


def read_manifest(folder: Path) -> dict[str, Any]:
    return read_format_json(
        folder / MANIFEST_FILE,
        MANIFEST_FORMAT,
        "export manifest",
        missing=f"{folder} is not an exported artifact: {MANIFEST_FILE} is missing",
    )


def manifest_mismatches(folder: Path) -> list[str]:
    """Every file the manifest lists that is missing or differs, and every file it does not list."""
    listed: dict[str, str] = read_manifest(folder).get("files", {})
    present = {path.name for path in folder.iterdir() if path.name != MANIFEST_FILE}
    problems = [f"{name} is missing" for name in sorted(set(listed) - present)]
    problems += [f"{name} is not in the manifest" for name in sorted(present - set(listed))]
    problems += [
        f"{name} does not match its sha256"
        for name in sorted(set(listed) & present)
        if sha256_file(folder / name) != listed[name]
    ]
    return problems
