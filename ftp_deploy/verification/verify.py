"""Verify an exported artifact: parity against the PyTorch reference, then latency."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import onnx
import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.logger import G_LOGGER

from ftp_deploy.artifacts import CONFIG_FILE, load_artifact
from ftp_deploy.engines.onnx_runtime import OrtRunner, SessionFromOnnx, SessionOptionsLoader
from ftp_deploy.engines.trt_env import require_tensorrt_gpu
from ftp_deploy.engines.trt_plan import PLAN_FILE, rebuild_command
from ftp_deploy.errors import ArtifactError, BaseModelMismatchError, UsageError
from ftp_deploy.exporters.manifest import manifest_mismatches, read_manifest
from ftp_deploy.exporters.widen import widened_to_fp32
from ftp_deploy.fileio import sha256_file
from ftp_deploy.flops import flop_ratio
from ftp_deploy.models import DTYPES, LoadedModel, load_base_model
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.verification.inputs import Feed, InputPlan, load_feeds, random_feeds, save_feeds, text_feeds
from ftp_deploy.verification.latency import LatencyComparison, compare_latency, latency_feed
from ftp_deploy.verification.parity import ParityReport, Tolerance, check_parity
from ftp_deploy.verification.report import environment, write_report
from ftp_deploy.verification.runners import RoutedTorchRunner

RUNTIMES = ("onnxrt", "trt")
CPU_NATIVE_DTYPES = ("fp32", "fp16")
HELD_OUT_TEXT = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "wikitext2" / "wiki.test.raw"


@dataclass
class VerifyResult:
    parity: ParityReport
    latency: LatencyComparison | None
    report_dir: Path


@dataclass(frozen=True)
class Artifact:
    """An exported folder whose files match its manifest."""

    folder: Path
    manifest: dict[str, Any]

    @classmethod
    def open(cls, folder: Path) -> Artifact:
        if not folder.is_dir():
            raise ArtifactError(f"artifact folder not found: {folder}")
        manifest = read_manifest(folder)
        problems = manifest_mismatches(folder)
        if problems:
            raise ArtifactError(f"{folder} does not match its manifest: {'; '.join(problems)}")
        artifact = cls(folder, manifest)
        try:
            onnx.load(artifact.model_path, load_external_data=False)
        except Exception as err:  # protobuf's DecodeError and OSError alike: the file is not an ONNX model
            raise ArtifactError(f"{artifact.model_path} does not load as an ONNX model: {err}") from err
        return artifact

    @property
    def model_path(self) -> Path:
        return self.folder / str(self.manifest.get("model_file", "model.onnx"))

    def require_plan(self) -> None:
        """An ArtifactError, saying how to build it, where the folder has no TensorRT plan."""
        if not (self.folder / PLAN_FILE).is_file():
            raise ArtifactError(
                f"{self.folder} has no TensorRT plan ({PLAN_FILE}): run ftp-deploy export --engine trt on this "
                f"machine, or build it from this artifact with {shlex.join(rebuild_command(self.folder))}"
            )

    def session_source(self) -> Path | bytes:
        """The file itself, or its fp32 widening where ONNX Runtime's CPU provider lacks the dtype."""
        if self.manifest["dtype"] in CPU_NATIVE_DTYPES:
            return self.model_path
        return widened_to_fp32(self.model_path).SerializeToString()


@dataclass(frozen=True)
class Arithmetic:
    """The precision the candidate computes in: the reference computes in it too, and the tolerance is its."""

    dtype: str
    note: str


def arithmetic(exported: str, runtime: str) -> Arithmetic:
    if runtime == "trt" or exported in CPU_NATIVE_DTYPES:
        return Arithmetic(exported, f"the {exported} file as exported, against PyTorch computing in {exported}")
    return Arithmetic(
        "fp32",
        f"ONNX Runtime's CPU provider has no {exported} kernels: a copy of the file widened to fp32 ran, against "
        f"PyTorch with the same {exported}-rounded weights computing in fp32; {exported} arithmetic itself is "
        "checked by --runtime trt only",
    )


def reference_model(
    artifact: Artifact, run_dir: Path | None, model: str | None, compute: str = "fp32"
) -> tuple[RoutedModel, LoadedModel]:
    """The PyTorch model the artifact must reproduce, loaded from its run folder.

    Its weights are the export's (rounded to the exported dtype); it computes in `compute`.
    """
    manifest = artifact.manifest
    run = run_dir or Path(manifest["source_run"]["path"])
    routed_artifact = load_artifact(run)
    expected = manifest["base_model"]["config_hash"]
    if routed_artifact.base.config_hash != expected:
        raise BaseModelMismatchError(
            f"{run} was trained for {routed_artifact.base.ref!r}, not the model of {artifact.folder} "
            f"({manifest['base_model']['ref']!r})"
        )
    if run_dir is None and sha256_file(run / CONFIG_FILE) != manifest["source_run"]["config_sha256"]:
        raise ArtifactError(f"the run folder {run} changed since the export; pass --against RUN_DIR")
    loaded = load_base_model(model or manifest["base_model"]["loaded_from"])
    # As the exporter casts them: parameters only, so the rotary frequencies stay fp32.
    for parameter in loaded.model.parameters():
        parameter.data = parameter.data.to(DTYPES[manifest["dtype"]]).to(DTYPES[compute])
    if manifest["graph"] == "dense":
        num_layers = routed_artifact.base.num_layers
        return RoutedModel(loaded.model, Schedule.uniform(0.0, num_layers), RouterSpec(kind="static")), loaded
    return routed_artifact.build(loaded.model), loaded


def parity_feeds(loaded: LoadedModel, plan: InputPlan, inputs: Path | None) -> list[Feed]:
    if inputs is not None:
        return load_feeds(inputs)
    pad_id = int(loaded.tokenizer.pad_token_id)
    feeds = random_feeds(int(loaded.model.config.vocab_size), plan, pad_id)
    if HELD_OUT_TEXT.is_file():
        text = HELD_OUT_TEXT.read_text(encoding="utf-8")[:200_000]
        feeds = text_feeds(loaded.tokenizer(text).input_ids, plan, pad_id) + feeds
    return feeds


def _session_run(source: Path | bytes, threads: int | None) -> Callable[[Feed], object]:
    session = SessionFromOnnx(source, options=SessionOptionsLoader(threads=threads))()
    return partial(session.run, None)


def _candidate(artifact: Artifact, runtime: str) -> BaseRunner:
    if runtime == "trt":
        from ftp_deploy.engines.trt_runner import EngineFromPlan, TrtPlanRunner

        return TrtPlanRunner(EngineFromPlan(artifact.folder), name="tensorrt")
    return OrtRunner(SessionFromOnnx(artifact.session_source()), name="onnxruntime")


def _latency_run(artifact: Artifact, runtime: str, threads: int | None, stack: ExitStack) -> Callable[[Feed], object]:
    """A run function for timing; a TensorRT runner stays active until `stack` closes."""
    if runtime == "trt":
        runner = stack.enter_context(_candidate(artifact, runtime))
        return runner.infer
    return _session_run(artifact.session_source(), threads)


def verify(
    art_dir: Path,
    against: Path | None = None,
    baseline: Path | None = None,
    seq_lens: Sequence[int] = (128, 512, 1024, 2048),
    batch: int = 1,
    atol: float | None = None,
    rtol: float | None = None,
    report: Path | None = None,
    runtime: str = "onnxrt",
    inputs: Path | None = None,
    runs: int = 10,
    threads: int | None = None,
    model: str | None = None,
    progress: Callable[[str], None] = lambda _: None,
) -> VerifyResult:
    """Parity (Polygraphy Comparator) and latency of `art_dir`; writes the report folder.

    `runtime="trt"` runs the artifact's model.plan through engines/trt_runner.py; that path needs
    TensorRT and a GPU and could not be run where it was written.
    """
    if runtime not in RUNTIMES:
        raise UsageError(f"unknown runtime {runtime!r}; choose one of {', '.join(RUNTIMES)}")
    if runtime == "trt":
        require_tensorrt_gpu("--runtime trt")
    if batch < 1 or any(t < 1 for t in seq_lens):
        raise UsageError("--batch and every --seq-lens entry must be >= 1")
    progress("checking the artifact against its manifest")
    artifact = Artifact.open(art_dir)
    compared = arithmetic(artifact.manifest["dtype"], runtime)
    tolerance = Tolerance.for_dtype(compared.dtype, atol, rtol)
    dense_artifact = Artifact.open(baseline) if baseline is not None else None
    if runtime == "trt":
        for opened in (artifact, dense_artifact):
            if opened is not None:
                opened.require_plan()
    progress("loading the PyTorch reference")
    routed, loaded = reference_model(artifact, against, model, compared.dtype)
    feeds = parity_feeds(loaded, InputPlan(), inputs)
    out_dir = report or art_dir.with_name(art_dir.name + "-verify")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_feeds(feeds, out_dir / "inputs.json")

    progress("comparing outputs (Polygraphy Comparator)")
    reference = RoutedTorchRunner(
        routed,
        last_token_logits=bool(artifact.manifest["last_token_logits"]),
        debug_outputs=bool(artifact.manifest["debug_outputs"]),
        name="pytorch",
    )
    parity, results = check_parity(reference, _candidate(artifact, runtime), feeds, tolerance)
    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        results.save(str(out_dir / "run_results.json"))

    latency = None
    if seq_lens:
        vocab = int(loaded.model.config.vocab_size)
        schedule = routed.schedule
        with ExitStack() as stack:
            latency = compare_latency(
                _latency_run(artifact, runtime, threads, stack),
                _latency_run(dense_artifact, runtime, threads, stack) if dense_artifact else None,
                [latency_feed(batch, t, vocab) for t in seq_lens],
                lambda t: 1 / flop_ratio(loaded.model.config, schedule, t),
                runs,
                progress,
            )
    header = {
        "artifact": str(art_dir),
        "baseline": str(baseline) if baseline else None,
        "runtime": runtime,
        "dtype": artifact.manifest["dtype"],
        "graph": artifact.manifest["graph"],
        "compared": compared.note,
        "environment": environment(threads or torch.get_num_threads()),
    }
    write_report(out_dir, header, parity, latency, tolerance.atol, tolerance.rtol)
    return VerifyResult(parity, latency, out_dir)


def failure_summary(parity: ParityReport) -> str:
    failing = [o for o in parity.outputs if not o.passed]
    names = ", ".join(f"{o.name} (max |diff| {o.absolute['max']:.3g})" for o in failing if o.name == "logits")
    where = f"; first block over tolerance: {parity.first_failing_block}" if parity.first_failing_block else ""
    return f"parity failed: {names or 'logits'}{where}"
