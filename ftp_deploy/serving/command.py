"""The `ftp-deploy serve` command; the CLI registers it with `app.command()(serve)`.

A thin layer over `serving.server`: the options are `ServeOptions`' fields with its defaults.
"""

from __future__ import annotations

import contextlib
import json
import signal
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from ftp_deploy.console import console, err_console
from ftp_deploy.errors import ServerError
from ftp_deploy.serving.options import ServeOptions
from ftp_deploy.serving.server import RunningServer

DEFAULTS = ServeOptions()


def serve(
    sources: Annotated[
        list[Path],
        typer.Argument(help="Export folders made with --with-past, or model repositories from export --triton-repo"),
    ],
    host: Annotated[str, typer.Option(help="Address the HTTP and gRPC endpoints listen on")] = DEFAULTS.host,
    http_port: Annotated[int, typer.Option(help="HTTP/REST port")] = DEFAULTS.http_port,
    grpc_port: Annotated[int, typer.Option(help="gRPC port")] = DEFAULTS.grpc_port,
    max_batch_size: Annotated[
        int, typer.Option(help="Requests Triton's dynamic batcher hands a model instance at once")
    ] = DEFAULTS.max_batch_size,
    instances: Annotated[
        int, typer.Option(help="Model instances per model (each a process with its own ONNX Runtime sessions)")
    ] = DEFAULTS.instances,
    threads: Annotated[int | None, typer.Option(help="ONNX Runtime intra-op threads per instance")] = DEFAULTS.threads,
    max_queue_delay_ms: Annotated[
        float, typer.Option(help="How long the batcher waits for more requests to join a batch")
    ] = DEFAULTS.max_queue_delay_ms,
    python_env: Annotated[
        Path | None,
        typer.Option(help="The Python environment the model runs in (default: this one); needs the \\[serve] extra"),
    ] = DEFAULTS.python_env,
    start_timeout: Annotated[float, typer.Option(help="Seconds to wait for the server to be ready")] = (
        DEFAULTS.start_timeout
    ),
    log_file: Annotated[Path | None, typer.Option(help="Keep the server's log here")] = DEFAULTS.log_file,
) -> None:
    """Serve exports from a real Triton Inference Server (HTTP and gRPC) until Ctrl-C.

    Each export gets two models: NAME-generate (one response a request) and NAME-stream (a response a token).
    """
    from ftp_deploy.serving.server import failure_line, start_server

    settings = ServeOptions(
        host=host,
        http_port=http_port,
        grpc_port=grpc_port,
        max_batch_size=max_batch_size,
        instances=instances,
        threads=threads,
        max_queue_delay_ms=max_queue_delay_ms,
        python_env=python_env,
        start_timeout=start_timeout,
        log_file=log_file,
    )
    with _sigterm_as_interrupt():
        server = start_server(
            sources, settings, on_start=lambda: err_console.print("starting tritonserver ...", highlight=False)
        )
        try:
            _announce(server)
            code = server.wait()
            reason = failure_line(server.log_path)  # read before stop() removes the workspace
        except KeyboardInterrupt:
            err_console.print("stopping the server ...", highlight=False)
            stopped = server.stop()
            err_console.print(f"stopped (tritonserver exit {stopped})", highlight=False)
            return
        finally:
            server.stop()
    raise ServerError(f"tritonserver exited on its own (exit {code}); its log said: {reason}")


def _announce(server: RunningServer) -> None:
    version = _server_version(server)
    lines = [
        f"Triton Inference Server {version} ready (pid {server.process.pid})",
        f"  HTTP  http://{server.http_url}  (KServe v2 infer; generate, generate_stream)",
        f"  gRPC  {server.grpc_url}  (KServe v2 infer; stream_infer)",
        "  models:",
    ]
    for name in server.models:
        kind = "a response a token (decoupled)" if name.endswith("-stream") else "one response a request"
        lines.append(f"    {name}  {kind}")
    if server.not_served:
        lines.append(f"  not loaded here (they need NVIDIA's server container): {', '.join(server.not_served)}")
    if server.settings.log_file is not None:
        lines.append(f"  log: {server.log_path}")
    lines.append("Ctrl-C stops it.")
    for line in lines:
        console.print(line, markup=False, highlight=False, soft_wrap=True)
    console.file.flush()


def _server_version(server: RunningServer) -> str:
    try:
        with urllib.request.urlopen(f"http://{server.http_url}/v2", timeout=5) as answer:
            return str(json.loads(answer.read())["version"])
    except (OSError, ValueError, KeyError):
        return "(version unknown)"


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a service manager's stop) and SIGINT take the Ctrl-C path: the server shuts down in order.

    SIGINT too, because Python leaves it ignored when the parent ignored it (a shell without job control
    starts `serve ... &` so), and Ctrl-C or `kill -INT` would then never stop the server.
    """

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {number: signal.signal(number, interrupt) for number in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
