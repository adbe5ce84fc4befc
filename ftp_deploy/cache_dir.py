"""Where ftp-deploy keeps what only saves time (converted GGUF models, prepacked ONNX Runtime graphs).

The cache root is $FTP_DEPLOY_CACHE, else $XDG_CACHE_HOME/ftp-deploy, else ~/.cache/ftp-deploy.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

CACHE_ENV = "FTP_DEPLOY_CACHE"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ftp-deploy"


def write_folder(folder: Path, write: Callable[[Path], None], errors: tuple[type[Exception], ...] = ()) -> bool:
    """Make `folder` by `write(staging)` in a hidden sibling renamed into place, so a partial folder is never
    read; False (and nothing left behind) where it cannot be written: an OSError, or `write` raised one of `errors`.

    A cache only saves time, so a read-only or full disk skips it rather than failing the command.
    """
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    except OSError:
        return False
    caught: tuple[type[Exception], ...] = (OSError, *errors)
    try:
        write(staging)
        os.replace(staging, folder)
    except caught:
        shutil.rmtree(staging, ignore_errors=True)
        return False
    return True
