"""generate's options, declared once: the command's fields and defaults, checked when made.

Torch-free, so a bad value fails before a model loads.
"""

from __future__ import annotations

from dataclasses import dataclass

from ftp_deploy.errors import UsageError
from ftp_deploy.generation.settings import GenerationSettings
from ftp_deploy.generation.source import check_runtime
from ftp_deploy.placement import DEFAULT_DEVICE, DEFAULT_DTYPE


@dataclass(frozen=True)
class GenerateOptions:
    """What `ftp-deploy generate SOURCE_DIR --prompt TEXT` does; each field is the option of the same name."""

    max_new_tokens: int = GenerationSettings.max_new_tokens
    runtime: str | None = None  # default: torch for a run folder, onnxrt for an export
    chat: bool = False  # wrap the prompt in the tokenizer's chat template
    do_sample: bool = GenerationSettings.do_sample
    temperature: float = GenerationSettings.temperature
    top_p: float = GenerationSettings.top_p
    seed: int | None = GenerationSettings.seed
    threads: int | None = None  # ONNX Runtime intra-op threads
    model: str | None = None
    trust_remote_code: bool = False
    device: str = DEFAULT_DEVICE  # where PyTorch runs the model
    dtype: str = DEFAULT_DTYPE

    def __post_init__(self) -> None:
        self.settings()  # checks the decoding values
        check_runtime(self.runtime)
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")

    def settings(self) -> GenerationSettings:
        """How to pick each new token, as both runtimes' decode loops take it."""
        return GenerationSettings(self.max_new_tokens, self.do_sample, self.temperature, self.top_p, self.seed)
