"""A training run's folder: `run.json` (settings and progress), `metrics.jsonl`, checkpoints.

Every file is written atomically, and a checkpoint's tensors are written before the
`run.json` that names them (with their sha256), so a run killed at any point, or a disk
that fills up, leaves the folder at its last complete checkpoint.

In a multi-process run only rank 0 writes: the other ranks hold a `RunFolder(path, writes=False)`,
whose writing methods do nothing, so the phases run the same code on every rank.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ftp_deploy import fileio
from ftp_deploy.errors import ArtifactError
from ftp_deploy.fileio import atomic_write_bytes, atomic_write_text, sha256_file
from ftp_deploy.formats.run_state import METRICS_FILE, RUN_FILE, Checkpoint, RunState

CHECKPOINT_DIR = "checkpoints"


class RunFolder:
    def __init__(self, path: Path, writes: bool = True) -> None:
        self.path = path
        self.writes = writes

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS_FILE

    def holds_files(self) -> bool:
        return self.path.is_dir() and any(self.path.iterdir())

    def read_state(self) -> RunState:
        """The saved run state; ArtifactError if this is not a training run folder."""
        return RunState.read(self.path, f"{self.path} is not a training run folder: {RUN_FILE} is missing")

    def write_state(self, state: RunState) -> None:
        if not self.writes:
            return
        with storage(self.path / RUN_FILE):
            state.write(self.path)

    def append_metrics(self, record: dict[str, Any]) -> None:
        if not self.writes:
            return
        with storage(self.metrics_path), open(self.metrics_path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Complete records only: a line cut short by a kill is skipped."""
        if not self.metrics_path.is_file():
            return []
        records = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
        return records

    def keep_metrics(self, keep: Callable[[dict[str, Any]], bool]) -> None:
        """Drop the records of work a resumed run will redo."""
        if not self.writes:
            return
        kept = [json.dumps(r) + "\n" for r in self.read_metrics() if keep(r)]
        with storage(self.metrics_path):
            atomic_write_text(self.metrics_path, "".join(kept))

    def save_checkpoint(self, step: int, tensors: dict[str, torch.Tensor]) -> Checkpoint:
        """Write step `step`'s tensors; the caller then records the returned entry in run.json."""
        name = f"{CHECKPOINT_DIR}/step-{step:07d}.safetensors"
        if not self.writes:
            return Checkpoint(step, name)
        path = self.path / name
        with storage(path):
            atomic_write_bytes(path, save_safetensors(tensors))
        return Checkpoint(step, name, sha256_file(path))

    def load_checkpoint(self, entry: Checkpoint) -> dict[str, torch.Tensor]:
        path = self.path / entry.file
        if not path.is_file() or sha256_file(path) != entry.sha256:
            raise ArtifactError(f"checkpoint {path} is missing or does not match {RUN_FILE}")
        try:
            return load_safetensors(path.read_bytes())
        except SafetensorError as err:
            raise ArtifactError(f"checkpoint {path} could not be read: {err}") from err

    def remove_checkpoints_except(self, entry: Checkpoint) -> None:
        if not self.writes:
            return
        for path in (self.path / CHECKPOINT_DIR).glob("step-*.safetensors"):
            if path.name != Path(entry.file).name:
                path.unlink(missing_ok=True)


def storage(path: Path) -> AbstractContextManager[None]:
    """fileio.storage, saying that the run can continue."""
    return fileio.storage(path, "what was saved before is intact (--resume continues from the last checkpoint)")
