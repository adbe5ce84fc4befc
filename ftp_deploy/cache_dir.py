"""Where ftp-deploy keeps what only saves time (converted GGUF models, prepacked ONNX Runtime graphs).

The cache root is $FTP_DEPLOY_CACHE, else $XDG_CACHE_HOME/ftp-deploy, else ~/.cache/ftp-deploy.
"""

from __future__ import annotations

import os
from pathlib import Path

CACHE_ENV = "FTP_DEPLOY_CACHE"


def cache_root() -> Path:
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ftp-deploy"
