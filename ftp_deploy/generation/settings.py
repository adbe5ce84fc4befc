"""What a user asks `generate` for, checked when made; torch-free, so bad values fail before a model loads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ftp_deploy.errors import UsageError


@dataclass(frozen=True)
class GenerationSettings:
    """What `generate` is asked for; checked when made, so bad values fail before a model loads."""

    max_new_tokens: int = 64
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise UsageError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature > 0:
            raise UsageError(f"--temperature must be > 0, got {self.temperature:g}")
        if not 0 < self.top_p <= 1:
            raise UsageError(f"--top-p must lie in (0, 1], got {self.top_p:g}")
        if not self.do_sample and (self.temperature != 1.0 or self.top_p != 1.0 or self.seed is not None):
            raise UsageError("--temperature, --top-p and --seed apply with --do-sample only")

    def generate_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p, top_k=None)
        return kwargs
