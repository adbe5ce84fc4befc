"""`ftp-deploy serve`: the real Triton Inference Server (the nvidia-pytriton wheel's `tritonserver`) over exports.

What runs is the server binary with its Python backend, over a model repository of generation
models (`exporters/triton_repo.py`, `serving/model.py`); PyTriton's own Python API (`Triton().bind`)
is not used, since its models live in the calling process and cannot go into a repository that
NVIDIA's container serves as well. Every check that can fail on bad input runs before the server
starts, in this order:

1. the serving environment (`python_env`, default this interpreter's): its Python, asked in a
   subprocess, reports its version, its libpython folder, numpy's version and where nvidia-pytriton
   is. The Python backend's stub embeds that libpython; numpy must be < 2 (Triton 2.51's stub hands
   numpy 2 arrays over with the wrong layout: seen, every tensor garbage);
2. every source is a --with-past export folder whose files match its manifest, or a model
   repository that `export --triton-repo` wrote;
3. the ports are free on the host.

Then a workspace (a temporary folder) gets the backend folder (the wheel's Python backend and the
stub for the environment's Python version) and a repository whose generation models point at the
export folders, and `tritonserver` starts with:

- `PATH` led by the environment's `bin`: the stub's embedded Python finds its prefix (a venv's
  site-packages) from the `python3` on PATH;
- `LD_LIBRARY_PATH` led by the environment's own libpython folder: the stub links
  `libpython3.X.so.1.0`, which would otherwise be the system's (Debian's 3.11.2), and a venv of
  another 3.11 build fails at model load (`'_thread.RLock' object has no attribute
  '_recursion_count'`, seen with the pyenv 3.11.7 here), then the wheel's own libraries.

It is ready when `/v2/health/ready` answers 200 (all models loaded: strict readiness). The server
process dies with this one (PR_SET_PDEATHSIG), so a killed `ftp-deploy serve` leaves no server.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from ftp_deploy.errors import ArtifactError, MissingDependencyError, ServerError, StorageError, UsageError
from ftp_deploy.serving.options import ServeOptions

PIP_HINT = "pip install 'ftp-deploy[serve]'"
STUB = "triton_python_backend_stub"
LOG_FILE = "tritonserver.log"
# Asked of the serving environment's Python (stdlib only, plus numpy when it is there).
PROBE = r"""
import importlib.util, json, sys, sysconfig
def where(name):
    try:
        spec = importlib.util.find_spec(name)
    except Exception:
        return None
    if spec is None:
        return None
    return spec.origin or next(iter(spec.submodule_search_locations or []), None)
try:
    import numpy
    numpy_version = numpy.__version__
except Exception:
    numpy_version = None
needed = ("onnxruntime", "onnx", "transformers", "polygraphy", "ftp_deploy.serving.triton_model")
print(json.dumps({
    "version": "%d.%d" % sys.version_info[:2], "prefix": sys.prefix,
    "libdir": sysconfig.get_config_var("LIBDIR"), "ldlibrary": sysconfig.get_config_var("LDLIBRARY"),
    "shared": bool(sysconfig.get_config_var("Py_ENABLE_SHARED")), "numpy": numpy_version,
    "pytriton": where("pytriton"), "missing": [name for name in needed if where(name) is None],
}))
"""


@dataclass(frozen=True)
class ServingEnvironment:
    """A Python environment that can run the Python backend's stub and the generation model, and its server."""

    python: Path
    version: str
    libdir: Path
    tritonserver: Path
    backend: Path  # the wheel's backends/python: libtriton_python.so, triton_python_backend_utils.py
    stub: Path
    libs: Path  # the wheel's bundled shared libraries (libtritonserver and its dependencies)

    def server_env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["PATH"] = os.pathsep.join([str(self.python.parent), env.get("PATH", "")])
        libraries = [str(self.libdir), str(self.libs)]
        if env.get("LD_LIBRARY_PATH"):
            libraries.append(env["LD_LIBRARY_PATH"])
        env["LD_LIBRARY_PATH"] = os.pathsep.join(libraries)
        # The export holds its tokenizer; nothing may reach for the hub.
        env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        return env


def probe_environment(python_env: Path | None) -> ServingEnvironment:
    """The serving environment's facts, or MissingDependencyError naming what it lacks."""
    if python_env is None:
        python, where = Path(sys.executable), "this Python environment"
    else:
        candidates = [python_env / "bin" / name for name in ("python3", "python")]
        found = next((path for path in candidates if path.is_file()), None)
        if found is None:
            raise UsageError(f"--python-env {python_env} holds no bin/python3")
        python, where = found, f"the Python environment {python_env}"
    try:
        done = subprocess.run([str(python), "-c", PROBE], capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise MissingDependencyError(f"could not run {python}: {err}") from err
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise MissingDependencyError(f"could not ask {python} about its environment: {last}")
    facts = json.loads(done.stdout.strip().splitlines()[-1])
    if facts["pytriton"] is None:
        raise MissingDependencyError(
            f"no Triton Inference Server in {where}: {PIP_HINT} there (the nvidia-pytriton wheel ships tritonserver)"
        )
    if facts["numpy"] is None or int(facts["numpy"].split(".")[0]) >= 2:
        raise MissingDependencyError(
            f"{where} has numpy {facts['numpy']}; Triton 2.51's Python backend (nvidia-pytriton 0.7) needs "
            f"numpy<2 ({PIP_HINT} pins it)"
        )
    if facts["missing"]:
        raise MissingDependencyError(
            f"{where} lacks {', '.join(facts['missing'])}, which the generation model imports: "
            f"pip install 'ftp-deploy[serve]' there"
        )
    libdir = Path(facts["libdir"] or "")
    if not facts["shared"] or not (libdir / f"libpython{facts['version']}.so.1.0").is_file():
        raise MissingDependencyError(
            f"the Python of {where} has no shared libpython{facts['version']} (in {libdir}), which Triton's "
            "Python backend stub embeds; use a Python built with --enable-shared (Debian's /usr/bin/python3 is)"
        )
    root = Path(facts["pytriton"]).parent / "tritonserver"
    stub = root / "python_backend_stubs" / facts["version"] / STUB
    if not stub.is_file():
        raise MissingDependencyError(
            f"nvidia-pytriton in {where} has no Python backend stub for Python {facts['version']}"
        )
    return ServingEnvironment(
        python=python,
        version=facts["version"],
        libdir=libdir,
        tritonserver=root / "bin" / "tritonserver",
        backend=root / "backends" / "python",
        stub=stub,
        libs=Path(facts["pytriton"]).parent.parent / "nvidia_pytriton.libs",
    )


@dataclass(frozen=True)
class Source:
    """What `serve` was given: an export folder (its generation models are written) or a repository."""

    path: Path
    export: Any | None  # ExportedArtifact


def open_sources(paths: list[Path]) -> list[Source]:
    """Each path an export made --with-past (manifest checked) or a repository with generation models."""
    from ftp_deploy.errors import PrefillOnlyExportError
    from ftp_deploy.formats.export_manifest import MANIFEST_FILE, ExportedArtifact

    if not paths:
        raise UsageError("give at least one export folder (made with export --with-past) or model repository")
    sources = []
    for path in paths:
        if not path.is_dir():
            raise ArtifactError(f"folder not found: {path}")
        if (path / MANIFEST_FILE).is_file():
            artifact = ExportedArtifact.open(path)
            if artifact.manifest.with_past is None:
                raise PrefillOnlyExportError(
                    f"{path} is a prefill-only export (no decode graph): re-export it with --with-past to serve it"
                )
            sources.append(Source(path, artifact))
        elif not repository_models(path)[0]:
            raise ArtifactError(
                f"{path} is neither an export folder ({MANIFEST_FILE}) nor a model repository with generation "
                "models (export --with-past --triton-repo DIR writes one)"
            )
        else:
            sources.append(Source(path, None))
    return sources


def repository_models(repo: Path) -> tuple[list[str], list[str]]:
    """(Python-backend models this server runs, other models: they need NVIDIA's container) of a repository."""
    from ftp_deploy.exporters.triton_repo import CONFIG_FILE, read_config

    served: list[str] = []
    other: list[str] = []
    for config_path in sorted(repo.glob(f"*/{CONFIG_FILE}")):
        try:
            config = read_config(config_path)
        except Exception as err:  # protobuf's ParseError: not a config Triton would load either
            raise ArtifactError(f"{config_path} is not a Triton model config: {err}") from err
        (served if config.backend == "python" else other).append(config.name or config_path.parent.name)
    return served, other


def check_port(host: str, port: int, option: str) -> None:
    """UsageError when something listens on host:port already (TIME_WAIT leftovers do not count)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as err:
        raise UsageError(f"--host {host}: {err}") from err
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as err:
            raise UsageError(f"{option} {port}: {host}:{port} is in use ({err.strerror})") from err


@dataclass
class RunningServer:
    """A started, ready tritonserver; `stop()` (or leaving the `with` block) shuts it down and removes the workspace."""

    process: subprocess.Popen[bytes]
    settings: ServeOptions
    models: list[str]
    not_served: list[str]
    workspace: Path
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def http_url(self) -> str:
        return f"{self.settings.host}:{self.settings.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.settings.host}:{self.settings.grpc_port}"

    def wait(self) -> int:
        """Block until the server exits on its own; it is left unreaped, so `stop()` can still end its stubs."""
        info = os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT)
        assert info is not None
        return info.si_status if info.si_code == os.CLD_EXITED else -info.si_status

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """Ask the server to finish (SIGINT: in-flight requests end first), kill it after `timeout_s`."""
        if self.process.returncode is None:
            if not self._exited(0):
                self.process.send_signal(signal.SIGINT)
                self._exited(timeout_s)
            self._end_group()
        self._cleanup()
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL to the server and its backend stubs at once, as a crash of the machine's server would end them."""
        if self.process.returncode is None:
            self._end_group()

    def _exited(self, timeout_s: float) -> bool:
        """Whether the server exited within `timeout_s`, without reaping it (its PID keeps naming its group)."""
        deadline = time.monotonic() + timeout_s
        while os.waitid(os.P_PID, self.process.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def _end_group(self) -> None:
        # The Python backend's stubs run in the server's process group (it leads its own session). An
        # idle stub exits within seconds of its server's death, but one that was generating when the
        # server died was seen to stay (parent PID 1) for good: nothing of a stopped server may outlive
        # it. The server is not reaped yet, so its PID still names the group and cannot be reused.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()
        deadline = time.monotonic() + 10
        with contextlib.suppress(ProcessLookupError, PermissionError):
            while time.monotonic() < deadline:  # until init has reaped the stubs too (signal 0 only asks)
                os.killpg(self.process.pid, 0)
                time.sleep(0.05)

    def _cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
        shutil.rmtree(self.workspace, ignore_errors=True)

    def __enter__(self) -> RunningServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_server(
    paths: list[Path], settings: ServeOptions | None = None, on_start: Callable[[], None] | None = None
) -> RunningServer:
    """Check everything, start tritonserver over the sources and wait until it is ready.

    `settings`: ServeOptions() unless given. `on_start` is called once every check has passed, just
    before the server process starts.
    """
    settings = settings or ServeOptions()
    from ftp_deploy.exporters.triton_repo import generation_names, write_generation_models

    environment = probe_environment(settings.python_env)
    sources = open_sources(paths)
    planned = [
        name
        for source in sources
        for name in (
            generation_names(source.path.name) if source.export is not None else repository_models(source.path)[0]
        )
    ]
    if len(set(planned)) != len(planned):
        raise UsageError(f"two sources give models of one name ({', '.join(planned)}): rename a folder")
    if settings.log_file is not None and not settings.log_file.parent.is_dir():
        raise UsageError(f"--log-file {settings.log_file}: the folder {settings.log_file.parent} does not exist")
    check_port(settings.host, settings.http_port, "--http-port")
    check_port(settings.host, settings.grpc_port, "--grpc-port")

    workspace = Path(tempfile.mkdtemp(prefix="ftp-deploy-serve-"))
    try:
        backends = workspace / "backends"
        shutil.copytree(environment.backend, backends / "python", ignore=shutil.ignore_patterns("__pycache__"))
        shutil.copy2(environment.stub, backends / "python" / STUB)
        own = workspace / "models"
        own.mkdir()
        repositories, models, not_served = [own], [], []
        for source in sources:
            if source.export is not None:
                written = write_generation_models(
                    source.export, own, source.path.name, settings.generation_options(), link_artifact=False
                )
                models += [config.parent.name for config in written]
            else:
                served, other = repository_models(source.path)
                repositories.append(source.path.resolve())
                models += served
                not_served += other
        log_path = settings.log_file or workspace / LOG_FILE
        command = [
            str(environment.tritonserver),
            *(f"--model-repository={repo}" for repo in repositories),
            f"--backend-directory={backends}",
            "--model-control-mode=explicit",
            *(f"--load-model={name}" for name in models),
            f"--http-address={settings.host}",
            f"--http-port={settings.http_port}",
            f"--grpc-address={settings.host}",
            f"--grpc-port={settings.grpc_port}",
            "--allow-metrics=false",
            "--exit-timeout-secs=10",
            "--strict-readiness=true",
        ]
        log = open(log_path, "wb")  # noqa: SIM115 -- the server writes it for as long as it runs
    except OSError as err:
        shutil.rmtree(workspace, ignore_errors=True)
        raise StorageError(f"could not prepare the server's workspace or log: {err}") from err
    except BaseException:
        shutil.rmtree(workspace, ignore_errors=True)
        raise
    if on_start is not None:
        on_start()
    process = subprocess.Popen(
        command,
        env=environment.server_env(),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,  # Ctrl-C reaches this process, which then stops the server in order
        preexec_fn=_die_with_parent,
    )
    server = RunningServer(process, settings, models, not_served, workspace, log_path, log)
    try:
        _wait_ready(server, settings.start_timeout)
    except BaseException:
        server.kill()
        server._cleanup()
        raise
    return server


def _wait_ready(server: RunningServer, timeout_s: float) -> None:
    url = f"http://{server.http_url}/v2/health/ready"
    deadline = time.monotonic() + timeout_s
    while True:
        if server._exited(0):
            server.kill()  # reaps it, and ends any stub it left
            raise ServerError(
                f"tritonserver stopped (exit {server.process.returncode}) before it was ready: "
                f"{failure_line(server.log_path)}"
            )
        try:
            with urllib.request.urlopen(url, timeout=1) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass  # not listening yet, or listening and not ready (503)
        if time.monotonic() > deadline:
            raise ServerError(
                f"tritonserver was not ready after {timeout_s:g} s (--start-timeout): {failure_line(server.log_path)}"
            )
        time.sleep(0.2)


def failure_line(log_path: Path) -> str:
    """The line of the server's log that says why it failed: a model that did not load, else its last error."""
    try:
        lines = log_path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return f"no log at {log_path}"

    def message(line: str) -> str:
        # Triton quotes a message and escapes its newlines; a Python exception's traceback follows them.
        return line.split("] ", 1)[-1].strip().strip('"').split("\\n", 1)[0].strip()

    for line in lines:
        if "failed to load '" in line:
            return message(line)
    errors = [line for line in lines if line.startswith("E") or line.startswith("error:")]
    return message(errors[-1]) if errors else f"see {log_path}"


def _die_with_parent() -> None:
    """In the child before exec: SIGKILL it when the process that started it dies (Linux prctl)."""
    pr_set_pdeathsig = 1
    # Not Linux: no prctl, and the server then outlives a killed parent, as any child would.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
