"""Atomic writes and file hashes: an interrupted write never leaves a half-written file."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

from ftp_deploy.errors import ArtifactError, StorageError

T = TypeVar("T")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@contextmanager
def storage(path: Path, kept: str = "what was saved before is intact") -> Iterator[None]:
    """Turns an OSError while writing `path` (a full disk, a read-only folder) into one clear line (exit 1)."""
    try:
        yield
    except OSError as err:
        raise StorageError(f"could not write {path}: {err.strerror or err}; {kept}") from err


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


def read_versioned_json(
    path: Path, format_name: str, version: int, description: str, missing: str, parse: Callable[[dict[str, Any]], T]
) -> T:
    """`parse` of the document at `path` (see read_format_json) if it has format version `version`.

    Another version, or a field `parse` finds missing or malformed, is an ArtifactError naming `path`.
    """
    data = read_format_json(path, format_name, description, missing)
    if data.get("format_version") != version:
        raise ArtifactError(
            f"{path} has format version {data.get('format_version')!r}; this ftp-deploy reads version {version}"
        )
    try:
        return parse(data)
    except (KeyError, TypeError, ValueError) as err:
        raise ArtifactError(f"{path} is incomplete or malformed ({type(err).__name__}: {err})") from err


def read_format_json(path: Path, format_name: str, description: str, missing: str) -> dict[str, Any]:
    """The JSON object at `path` whose "format" is `format_name`; ArtifactError naming what is wrong.

    `missing` is the message for a file that does not exist; `description` names the document
    in the message for a file of another kind ("... is not an ftp-deploy {description}").
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (FileNotFoundError, IsADirectoryError) as err:
        raise ArtifactError(missing) from err
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ArtifactError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict) or data.get("format") != format_name:
        raise ArtifactError(f"{path} is not an ftp-deploy {description}")
    return data
