"""What `generate` was given: a run folder (ftp_config.json) or an exported artifact (manifest.json).

Torch-free: the folder kind is settled from its files before anything heavy loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftp_deploy.errors import ArtifactError, UsageError
from ftp_deploy.export_format import MANIFEST_FILE, ExportedArtifact

CONFIG_FILE = "ftp_config.json"  # artifacts.CONFIG_FILE, named here without importing torch
RUNTIMES = ("torch",)


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


def check_runtime(runtime: str) -> str:
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    return runtime


def check_prompt(prompt: str) -> None:
    if not prompt.strip():
        raise UsageError("the prompt is empty")
