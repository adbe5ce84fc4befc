"""What `generate` was given: a run folder (ftp_config.json) or an exported artifact (manifest.json).

Torch-free: the folder kind is settled from its files before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftp_deploy.errors import ArtifactError, UsageError
from ftp_deploy.formats.export_manifest import MANIFEST_FILE, ExportedArtifact
from ftp_deploy.formats.routed_config import CONFIG_FILE

RUNTIMES = ("torch", "onnxrt")


@dataclass(frozen=True)
class GenerationSource:
    """A run folder (`export` None) or an exported folder whose files match its manifest."""

    folder: Path
    export: ExportedArtifact | None

    @property
    def kind(self) -> str:
        return "run" if self.export is None else "export"


def open_source(folder: Path) -> GenerationSource:
    if not folder.is_dir():
        raise ArtifactError(f"folder not found: {folder}")
    if (folder / CONFIG_FILE).is_file():
        return GenerationSource(folder, None)
    if (folder / MANIFEST_FILE).is_file():
        return GenerationSource(folder, ExportedArtifact.open(folder))
    raise ArtifactError(f"{folder} is neither a run folder ({CONFIG_FILE}) nor an exported artifact ({MANIFEST_FILE})")


def check_runtime(runtime: str | None) -> None:
    if runtime is not None and runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")


def resolve_runtime(runtime: str | None, source: GenerationSource) -> str:
    """The runtime asked for, else the folder's own: PyTorch for a run, ONNX Runtime for an export."""
    check_runtime(runtime)
    if runtime is None:
        return "torch" if source.export is None else "onnxrt"
    if runtime == "onnxrt" and source.export is None:
        raise UsageError(
            f"--runtime onnxrt runs an exported artifact, and {source.folder} is a run folder; "
            f"export it first: ftp-deploy export {source.folder} --engine onnx --with-past --out ART_DIR"
        )
    return runtime


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise UsageError("the prompt is empty")
