"""verify's options, declared once: the command's fields and defaults (torch-free, so --help needs no numpy)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ftp_deploy.errors import UsageError
from ftp_deploy.placement import DEFAULT_DEVICE

DEFAULT_LATENCY_LENGTHS = (128, 512, 1024, 2048)
MIN_TIMED_RUNS = 10
DEFAULT_DECODE_STEPS = 8
RUNTIMES = ("onnxrt", "trt")


@dataclass(frozen=True)
class VerifyOptions:
    """What `ftp-deploy verify ART_DIR` checks and times; each field is the option of the same name."""

    against: Path | None = None  # the run folder to compare with (default: the one the export names)
    baseline: Path | None = None  # a dense artifact to time side by side
    seq_lens: tuple[int, ...] = DEFAULT_LATENCY_LENGTHS  # latency lengths; empty skips latency
    batch: int = 1
    atol: float | None = None  # default by the compared dtype (formats/verify_report.DEFAULT_TOLERANCES)
    rtol: float | None = None
    report: Path | None = None  # default: ART_DIR-verify beside it
    runtime: str = "onnxrt"
    inputs: Path | None = None  # feeds saved by an earlier verify (inputs.json) to replay
    runs: int = MIN_TIMED_RUNS
    threads: int | None = None  # ONNX Runtime intra-op threads
    decode_steps: int = DEFAULT_DECODE_STEPS
    model: str | None = None
    trust_remote_code: bool = False
    device: str = DEFAULT_DEVICE  # where the PyTorch reference runs
    device_map: str | None = None

    def __post_init__(self) -> None:
        if self.runtime not in RUNTIMES:
            raise UsageError(f"unknown runtime {self.runtime!r}; choose one of {', '.join(RUNTIMES)}")
        if self.batch < 1 or any(t < 1 for t in self.seq_lens):
            raise UsageError("--batch and every --seq-lens entry must be >= 1")
        if self.decode_steps < 0:
            raise UsageError(f"--decode-steps must be >= 0, got {self.decode_steps}")
