"""What every benchmark script shares: the timing helpers and the --json output."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ftp_deploy.timing import interleaved_times, summarize

__all__ = ["interleaved_times", "summarize", "write_json"]


def write_json(path: Path | None, figures: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
