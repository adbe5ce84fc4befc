"""Where the task files, calibration text and held-out text live (laid out as shared/data/SOURCES.md says).

An installed wheel has no checkout beside it, so `FTP_DEPLOY_DATA` names the folder; without
it, a source checkout finds ../shared/data next to the repository root.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ENV = "FTP_DEPLOY_DATA"
_CHECKOUT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def data_root() -> Path | None:
    """$FTP_DEPLOY_DATA when set (even if it does not exist: the caller names it then), else
    ../shared/data beside a source checkout if present, else None."""
    configured = os.environ.get(DATA_ENV)
    if configured:
        return Path(configured).expanduser()
    return _CHECKOUT_DATA if _CHECKOUT_DATA.is_dir() else None


def data_file(relative: str) -> Path:
    """`relative` under the data root, or where a checkout would hold it; it may not exist."""
    return (data_root() or _CHECKOUT_DATA) / relative
