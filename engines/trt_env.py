"""What a TensorRT build or run needs from this machine: TensorRT itself and a CUDA GPU.

`require_tensorrt_gpu` is the fail-fast check, so a missing piece is one line before any slow
step. The environment is read through torch (GPU name, compute capability) and `tensorrt`
(version); `TrtEnvironment` itself is plain data (formats/plan_manifest), so plan checks run without either.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ftp_deploy.errors import MissingDependencyError
from ftp_deploy.formats.plan_manifest import TrtEnvironment


def _import_tensorrt() -> tuple[Any, str | None]:
    """(the tensorrt module or None, why it is missing)."""
    try:
        import tensorrt
    except ImportError as err:
        if getattr(err, "name", None) == "tensorrt":
            return None, "tensorrt is not installed"
        # The bindings wheel imports but cannot find libnvinfer: name what is actually missing.
        return None, f"tensorrt does not import ({err})"
    return tensorrt, None


def _gpu_problem() -> str | None:
    import torch

    if torch.cuda.is_available():
        return None
    if torch.version.cuda is None:
        return f"no CUDA GPU (torch {torch.__version__} is a CPU-only build)"
    return f"no CUDA GPU (torch {torch.__version__}, built for CUDA {torch.version.cuda}, sees none)"


def require_tensorrt_gpu(purpose: str, hint: str = "") -> Any:
    """The `tensorrt` module, or MissingDependencyError naming every missing piece in one line."""
    trt, trt_problem = _import_tensorrt()
    problems = [p for p in (trt_problem, _gpu_problem()) if p is not None]
    if problems:
        raise MissingDependencyError(
            f"{purpose} needs TensorRT and a CUDA GPU; missing here: {'; '.join(problems)}. "
            f"On a machine with an NVIDIA GPU: pip install 'ftp-deploy[trt]'{hint}"
        )
    return trt


def current_environment(trt: Any) -> TrtEnvironment:
    """This machine's TensorRT version and current CUDA device (needs a GPU)."""
    import torch

    device = torch.cuda.current_device()
    major, minor = torch.cuda.get_device_capability(device)
    return TrtEnvironment(str(trt.__version__), torch.cuda.get_device_name(device), (major, minor))


def default_timing_cache(environment: TrtEnvironment) -> Path:
    """One timing cache per TensorRT version and GPU, shared by every build on this machine.

    Timings measured on one GPU or TensorRT release are worthless on another, so they never share
    a file.
    """
    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    gpu = "".join(c if c.isalnum() else "-" for c in environment.gpu)
    return root / "ftp-deploy" / "tensorrt" / f"timing-{environment.tensorrt}-{environment.sm}-{gpu}.cache"


def error_logger(trt: Any) -> Any:
    """A `trt.ILogger` that keeps every error message (`.errors`) and drops the rest.

    Builder, parser and runtime failures return None or False; the reason is only in the log.
    Needs TensorRT.
    """

    class ErrorLogger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)
            self.errors: list[str] = []

        def log(self, severity: Any, msg: str) -> None:
            if severity in (trt.ILogger.Severity.ERROR, trt.ILogger.Severity.INTERNAL_ERROR):
                self.errors.append(msg)

    return ErrorLogger()
