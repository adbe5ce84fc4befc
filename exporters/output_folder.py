"""The artifact folder appears whole or not at all: built in a hidden sibling, then renamed into place."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ftp_deploy.errors import ArtifactError, OutputFolderError
from ftp_deploy.formats.export_manifest import read_manifest


def check_output_folder(out: Path, overwrite: bool) -> None:
    """Refuse an --out that cannot be written, or whose files the export would replace without --overwrite.

    With --overwrite only an earlier export (a folder with an ftp-deploy manifest) is replaced, so
    a mistyped --out can never delete a run folder or anything else.
    """
    parent = out.parent
    if not parent.is_dir():
        raise OutputFolderError(f"cannot write {out}: the folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputFolderError(f"cannot write {out}: {parent} is not writable")
    if out.exists() and not out.is_dir():
        raise OutputFolderError(f"{out} exists and is not a folder")
    if not out.is_dir() or not any(out.iterdir()):
        return
    if not overwrite:
        raise OutputFolderError(f"{out} is not empty; pass --overwrite to replace an earlier export there")
    try:
        read_manifest(out)
    except ArtifactError as err:
        raise OutputFolderError(f"--overwrite replaces earlier exports only, and {out} is not one ({err})") from err


def remove_stale_staging(out: Path) -> list[Path]:
    """Delete the hidden staging folders of exports to `out` that were killed before they could clean up.

    A staging folder's name carries the process id that made it: one whose process is gone is stale,
    one of a live process (an export running now) is left alone. Returns what was removed.
    """
    removed = []
    for path in out.parent.glob(f".{out.name}.*.partial"):
        pid = path.name[len(out.name) + 2 :].split(".", 1)[0]
        if pid.isdigit() and _alive(int(pid)):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A fresh folder next to `out`; renamed to `out` when the block succeeds, deleted when it fails."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.{os.getpid()}.", suffix=".partial", dir=out.parent))
    except OSError as err:
        raise OutputFolderError(f"cannot write next to {out}: {err.strerror}") from err
    try:
        yield staging
        _publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _publish(staging: Path, out: Path) -> None:
    if not out.exists():
        os.replace(staging, out)
        return
    # Renaming over a non-empty folder is not possible: move the old one aside first.
    retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
    os.replace(out, retired / out.name)
    try:
        os.replace(staging, out)
    except BaseException:
        os.replace(retired / out.name, out)
        raise
    finally:
        shutil.rmtree(retired, ignore_errors=True)
