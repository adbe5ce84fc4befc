"""eval's options, declared once: the command's fields and defaults (torch-free, for --help)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftp_deploy.evaluation.methods import DEFAULT_BASELINES
from ftp_deploy.evaluation.tasks import DEFAULT_TASKS
from ftp_deploy.placement import DEFAULT_DEVICE, DEFAULT_DTYPE

REPORT_SUBFOLDER = "eval"  # the report's default folder, inside the run folder


@dataclass(frozen=True)
class EvalOptions:
    """What `ftp-deploy eval RUN_DIR` scores; each field is the option of the same name."""

    tasks: str = DEFAULT_TASKS
    baselines: str = DEFAULT_BASELINES
    limit: int | None = None  # a fixed, seeded subset of N items (windows for perplexity)
    report: Path | None = None  # default RUN_DIR/eval
    data_dir: Path | None = None  # default $FTP_DEPLOY_DATA, else ../shared/data
    model: str | None = None
    trust_remote_code: bool = False
    seq_len: int = 512  # perplexity window length
    scored_tokens: int | None = None  # default FTP_SPEC 1b's scored positions
    device: str = DEFAULT_DEVICE
    dtype: str = DEFAULT_DTYPE
    device_map: str | None = None
