"""serve's options, declared once: the command's fields and defaults, checked when made (torch-free)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftp_deploy.errors import UsageError


@dataclass(frozen=True)
class ServeOptions:
    """`ftp-deploy serve`'s options; the fields' defaults are the command's."""

    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    max_batch_size: int = 16
    instances: int = 1
    threads: int | None = None
    max_queue_delay_ms: float = 10.0
    python_env: Path | None = None
    start_timeout: float = 300.0  # seconds
    log_file: Path | None = None

    def __post_init__(self) -> None:
        for option, port in (("--http-port", self.http_port), ("--grpc-port", self.grpc_port)):
            if not 1 <= port <= 65535:
                raise UsageError(f"{option} must lie in 1..65535, got {port}")
        if self.http_port == self.grpc_port:
            raise UsageError(f"--http-port and --grpc-port are both {self.http_port}")
        if self.max_batch_size < 1:
            raise UsageError(f"--max-batch-size must be >= 1, got {self.max_batch_size}")
        if self.instances < 1:
            raise UsageError(f"--instances must be >= 1, got {self.instances}")
        if self.threads is not None and self.threads < 1:
            raise UsageError(f"--threads must be >= 1, got {self.threads}")
        if not 0 <= self.max_queue_delay_ms <= 10_000:
            raise UsageError(f"--max-queue-delay-ms must lie in 0..10000, got {self.max_queue_delay_ms:g}")
        if self.start_timeout <= 0:
            raise UsageError(f"--start-timeout must be > 0, got {self.start_timeout:g}")

    def generation_options(self) -> Any:
        from ftp_deploy.exporters.triton_repo import GenerationOptions

        return GenerationOptions(self.max_batch_size, self.instances, self.threads, self.max_queue_delay_ms)
