"""Names of the methods an evaluation compares; kept free of torch so the CLI starts fast."""

from __future__ import annotations

from ftp_deploy.errors import ConfigError

DENSE = "dense"
FTP = "ftp"
STATIC = "static"
BASELINES = (DENSE, "random", STATIC, "shortgpt")
DEFAULT_BASELINES = ",".join(BASELINES)


def parse_baselines(text: str) -> list[str]:
    names = list(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [name for name in names if name not in BASELINES]
    if unknown:
        raise ConfigError(f"unknown baseline(s) {', '.join(unknown)}; choose from {', '.join(BASELINES)}")
    # Retention is relative to dense, so dense is always evaluated, and first.
    return [DENSE, *(name for name in names if name != DENSE)]
