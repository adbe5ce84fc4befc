"""ftp-deploy: FTP token-routed LLaMA-family models from training to TensorRT.

The stages as Python functions, with the names and options of the commands:

    import ftp_deploy
    state = ftp_deploy.train("run", sparsity=0.3, steps=60)        # ftp-deploy train --out run ...
    results = ftp_deploy.evaluate("run", tasks="arc_easy").results  # ftp-deploy eval run ...
    ftp_deploy.export("run", "onnx", with_past=True)               # ftp-deploy export run --out onnx ...
    report = ftp_deploy.verify("onnx")                              # ftp-deploy verify onnx
    print(ftp_deploy.generate("onnx", "The capital of France is").text)

Each takes its options dataclass (`ftp_deploy.TrainOptions()` and so on) or the same fields by
keyword, a `progress` (ftp_deploy.progress.Progress; silent by default), and returns a typed
result. They load lazily: importing ftp_deploy loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# name -> (module, attribute): what `ftp_deploy.NAME` is, imported on first use.
_API = {
    "train": ("ftp_deploy.training.stage", "train"),
    "TrainOptions": ("ftp_deploy.training.options", "TrainOptions"),
    "evaluate": ("ftp_deploy.evaluation.pipeline", "evaluate"),
    "EvalOptions": ("ftp_deploy.evaluation.options", "EvalOptions"),
    "export": ("ftp_deploy.exporters.stage", "export"),
    "ExportOptions": ("ftp_deploy.exporters.options", "ExportOptions"),
    "verify": ("ftp_deploy.verification.verify", "verify"),
    "VerifyOptions": ("ftp_deploy.verification.options", "VerifyOptions"),
    "generate": ("ftp_deploy.generation.pipeline", "generate"),
    "GenerateOptions": ("ftp_deploy.generation.options", "GenerateOptions"),
    "FtpDeployError": ("ftp_deploy.errors", "FtpDeployError"),
}
__all__ = [
    "EvalOptions",
    "ExportOptions",
    "FtpDeployError",
    "GenerateOptions",
    "TrainOptions",
    "VerifyOptions",
    "evaluate",
    "export",
    "generate",
    "train",
    "verify",
]

if TYPE_CHECKING:
    from ftp_deploy.errors import FtpDeployError
    from ftp_deploy.evaluation.options import EvalOptions
    from ftp_deploy.evaluation.pipeline import evaluate
    from ftp_deploy.exporters.options import ExportOptions
    from ftp_deploy.exporters.stage import export
    from ftp_deploy.generation.options import GenerateOptions
    from ftp_deploy.generation.pipeline import generate
    from ftp_deploy.training.options import TrainOptions
    from ftp_deploy.training.stage import train
    from ftp_deploy.verification.options import VerifyOptions
    from ftp_deploy.verification.verify import verify


def __getattr__(name: str) -> Any:
    if name not in _API:
        raise AttributeError(f"module 'ftp_deploy' has no attribute {name!r}")
    module, attribute = _API[name]
    value = getattr(importlib.import_module(module), attribute)
    globals()[name] = value
    return value
