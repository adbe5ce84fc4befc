"""Verify an exported artifact: parity against the PyTorch reference, then latency."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import torch
from polygraphy.backend.base import BaseRunner
from polygraphy.logger import G_LOGGER

from ftp_deploy.artifacts import load_artifact, load_routed
from ftp_deploy.comparison.decode import DecodeReport, OnnxDecoder, check_decode
from ftp_deploy.comparison.dequantize import use_stored_weights
from ftp_deploy.comparison.feeds import Feed, InputPlan, load_feeds, random_feeds, save_feeds, text_feeds
from ftp_deploy.comparison.parity import check_parity
from ftp_deploy.data_root import data_file
from ftp_deploy.engines.onnx_generation import OnnxGenerator
from ftp_deploy.engines.onnx_runtime import OrtRunner, SessionFromOnnx, SessionOptionsLoader
from ftp_deploy.engines.torch_runner import RoutedTorchRunner
from ftp_deploy.engines.trt_env import require_tensorrt_gpu
from ftp_deploy.engines.trt_plan import require_plan
from ftp_deploy.engines.widen import cpu_runnable
from ftp_deploy.errors import BaseModelMismatchError, UsageError
from ftp_deploy.fileio import storage
from ftp_deploy.flops import flop_ratio
from ftp_deploy.formats.export_manifest import CPU_NATIVE_DTYPES, ExportedArtifact, QuantizationRecord
from ftp_deploy.formats.verify_report import INPUTS, RUN_RESULTS, ParityReport, Tolerance, VerifyReport
from ftp_deploy.models import DTYPES, LoadedModel
from ftp_deploy.placement import CPU, DEFAULT_DTYPE, Placement, resolve_placement
from ftp_deploy.progress import NO_PROGRESS, Progress
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.verification.latency import LatencyComparison, compare_latency, latency_feed
from ftp_deploy.verification.options import VerifyOptions
from ftp_deploy.verification.report import environment, write_report

HELD_OUT_TEXT = "wikitext2/wiki.test.raw"  # under the data root


@dataclass
class VerifyResult:
    """`decode` is None when decoding was not checked; `decode_note` says why, or what was checked."""

    parity: ParityReport
    latency: LatencyComparison | None
    report_dir: Path
    compared: Arithmetic
    decode: DecodeReport | None = None
    decode_note: str = ""

    @property
    def passed(self) -> bool:
        return self.parity.passed and (self.decode is None or self.decode.passed)


@dataclass(frozen=True)
class Arithmetic:
    """The precision the candidate computes in: the reference computes in it too, and the tolerance is its."""

    dtype: str
    note: str
    brief: str  # the note in one short line, for the console


def arithmetic(exported: str, runtime: str, quantization: QuantizationRecord | None = None) -> Arithmetic:
    if quantization is not None:
        precision = quantization.precision
        return Arithmetic(
            "fp32",
            f"the {precision}-weight file with fp32 arithmetic (MatMulNBits at accuracy_level 0, a copy), against "
            f"PyTorch computing in fp32 with the file's own {precision} blocks dequantized; the file as shipped "
            f"(accuracy_level {quantization.accuracy_level}, int8 activations) is what latency times, and its "
            "quality cost is measured by benchmarks/quantization.py",
            f"{precision} weights dequantized into PyTorch, the file computing in fp32",
        )
    if runtime == "trt" or exported in CPU_NATIVE_DTYPES:
        note = f"the {exported} file as exported, against PyTorch computing in {exported}"
        return Arithmetic(exported, note, note)
    return Arithmetic(
        "fp32",
        f"ONNX Runtime's CPU provider has no {exported} kernels: a copy of the file widened to fp32 ran, against "
        f"PyTorch with the same {exported}-rounded weights computing in fp32; {exported} arithmetic itself is "
        "checked by --runtime trt only",
        f"an fp32-widened copy (no CPU {exported} kernels), against PyTorch in fp32",
    )


def reference_model(
    artifact: ExportedArtifact,
    run_dir: Path | None,
    model: str | None,
    compute: str = "fp32",
    trust_remote_code: bool = False,
    placement: Placement = CPU,
) -> tuple[RoutedModel, LoadedModel]:
    """The PyTorch model the artifact must reproduce, loaded from its run folder.

    Its weights are the export's (rounded to the exported dtype, or the file's quantized blocks
    dequantized); it computes in `compute`, on
    `placement`'s device(s) (whose dtype is the one the weights load in, before the rounding).
    """
    manifest = artifact.manifest
    run = run_dir or artifact.source_run("pass the run folder with --against RUN_DIR")
    routed_artifact = load_artifact(run)
    if routed_artifact.base.config_hash != manifest.base_model.config_hash:
        raise BaseModelMismatchError(
            f"{run} was trained for {routed_artifact.base.ref!r}, not the model of {artifact.folder} "
            f"({manifest.base_model.ref!r})"
        )
    model_ref = model or manifest.base_model.loaded_from
    routed, loaded, _ = load_routed(routed_artifact, model_ref, placement, trust_remote_code=trust_remote_code)
    # As the exporter casts them: parameters only, so the rotary frequencies stay fp32.
    for parameter in loaded.model.parameters():
        parameter.data = parameter.data.to(DTYPES[manifest.dtype]).to(DTYPES[compute])
    if manifest.quantization is not None:
        use_stored_weights(loaded.model, artifact.model_path, manifest.quantization)
    if manifest.graph == "dense":
        num_layers = routed_artifact.base.num_layers
        return RoutedModel(loaded.model, Schedule.uniform(0.0, num_layers), RouterSpec(kind="static")), loaded
    return routed, loaded


def parity_feeds(loaded: LoadedModel, plan: InputPlan, inputs: Path | None) -> list[Feed]:
    if inputs is not None:
        return load_feeds(inputs)
    pad_id = int(loaded.tokenizer.pad_token_id)
    feeds = random_feeds(int(loaded.model.config.vocab_size), plan, pad_id)
    held_out = data_file(HELD_OUT_TEXT)
    if held_out.is_file():
        text = held_out.read_text(encoding="utf-8")[:200_000]
        feeds = text_feeds(loaded.tokenizer(text).input_ids, plan, pad_id) + feeds
    return feeds


def _session_run(source: Path | bytes, threads: int | None) -> Callable[[Feed], object]:
    session = SessionFromOnnx(source, options=SessionOptionsLoader(threads=threads))()
    return partial(session.run, None)


def _session_source(artifact: ExportedArtifact, compared: bool = False) -> Path | bytes:
    """The file as timed, or (`compared`) as parity runs it: a quantized file with fp32 arithmetic."""
    quantized = compared and artifact.manifest.quantization is not None
    return cpu_runnable(artifact.model_path, artifact.manifest.dtype, quantized)


def _candidate(artifact: ExportedArtifact, runtime: str) -> BaseRunner:
    if runtime == "trt":
        from ftp_deploy.engines.trt_runner import EngineFromPlan, TrtPlanRunner

        return TrtPlanRunner(EngineFromPlan(artifact.folder), name="tensorrt")
    # A with-past prefill also outputs every layer's cache: the decode check compares that, not parity.
    outputs = [name for name in artifact.manifest.outputs if not name.startswith("present.")]
    return OrtRunner(SessionFromOnnx(_session_source(artifact, compared=True)), name="onnxruntime", outputs=outputs)


def _latency_run(
    artifact: ExportedArtifact, runtime: str, threads: int | None, stack: ExitStack
) -> Callable[[Feed], object]:
    """A run function for timing; a TensorRT runner stays active until `stack` closes."""
    if runtime == "trt":
        runner = stack.enter_context(_candidate(artifact, runtime))
        return runner.infer
    return _session_run(_session_source(artifact), threads)


def verify(
    art_dir: Path | str, options: VerifyOptions | None = None, progress: Progress = NO_PROGRESS, **fields: Any
) -> VerifyResult:
    """Parity (Polygraphy Comparator) and latency of `art_dir`; writes the report folder.

    `options` (default VerifyOptions()) with `fields` replaced by name, so `verify(art, baseline=dense)`
    reads as the command line does. `runtime="trt"` runs the artifact's model.plan through
    engines/trt_runner.py (TensorRT and a GPU).
    """
    opts, art_dir = replace(options or VerifyOptions(), **fields), Path(art_dir)
    placement = resolve_placement(opts.device, DEFAULT_DTYPE, opts.device_map)
    if opts.runtime == "trt":
        require_tensorrt_gpu("--runtime trt")
    with progress.phase("check the artifact against its manifest"):
        artifact = ExportedArtifact.open(art_dir)
        compared = arithmetic(artifact.manifest.dtype, opts.runtime, artifact.manifest.quantization)
        tolerance = Tolerance.for_dtype(compared.dtype, opts.atol, opts.rtol)
        dense_artifact = ExportedArtifact.open(opts.baseline) if opts.baseline is not None else None
        if opts.runtime == "trt":
            for opened in (artifact, dense_artifact):
                if opened is not None:
                    require_plan(opened.folder)
    with progress.phase("load the PyTorch reference"):
        routed, loaded = reference_model(
            artifact, opts.against, opts.model, compared.dtype, opts.trust_remote_code, placement
        )
        feeds = parity_feeds(loaded, InputPlan(), opts.inputs)
    out_dir = opts.report or art_dir.with_name(art_dir.name + "-verify")
    with storage(out_dir):
        out_dir.mkdir(parents=True, exist_ok=True)
        save_feeds(feeds, out_dir / INPUTS)

    with progress.phase("compare outputs (Polygraphy Comparator)"):
        reference = RoutedTorchRunner(
            routed,
            last_token_logits=artifact.manifest.last_token_logits,
            debug_outputs=artifact.manifest.debug_outputs,
            name="pytorch",
        )
        parity, results = check_parity(reference, _candidate(artifact, opts.runtime), feeds, tolerance)
        with G_LOGGER.verbosity(G_LOGGER.ERROR), storage(out_dir):
            results.save(str(out_dir / RUN_RESULTS))

    decode, decode_note = None, decode_skipped(artifact, opts.runtime, opts.decode_steps)
    if not decode_note:
        with progress.phase(f"compare prefill + {opts.decode_steps} decode steps with PyTorch's cached decode"):
            decode = check_decode(
                routed,
                OnnxDecoder(OnnxGenerator.open(art_dir, threads=opts.threads, fp32_arithmetic=True)),
                *decode_prompt(feeds, opts.decode_steps, artifact),
                steps=opts.decode_steps,
                tolerance=tolerance,
            )
        decode_note = f"ONNX Runtime prefill + {opts.decode_steps} decode steps against PyTorch (FTP_SPEC section 9)"

    latency = None
    if opts.seq_lens:
        vocab = int(loaded.model.config.vocab_size)
        schedule = routed.schedule
        with ExitStack() as stack:
            latency = compare_latency(
                _latency_run(artifact, opts.runtime, opts.threads, stack),
                _latency_run(dense_artifact, opts.runtime, opts.threads, stack) if dense_artifact else None,
                [latency_feed(opts.batch, t, vocab) for t in opts.seq_lens],
                lambda t: 1 / flop_ratio(loaded.model.config, schedule, t),
                opts.runs,
                progress,
            )
    record = VerifyReport(
        artifact=str(art_dir),
        baseline=str(opts.baseline) if opts.baseline else None,
        runtime=opts.runtime,
        dtype=artifact.manifest.dtype,
        graph=artifact.manifest.graph,
        compared=compared.note,
        reference_placement=placement,
        environment=environment(opts.threads or torch.get_num_threads()),
        passed=parity.passed and (decode is None or decode.passed),
        parity=parity,
        decode=decode,
        decode_note=decode_note,
        latency=latency,
    )
    with storage(out_dir):
        write_report(out_dir, record)
    return VerifyResult(parity, latency, out_dir, compared, decode, decode_note)


def decode_skipped(artifact: ExportedArtifact, runtime: str, steps: int) -> str:
    """Why decoding is not checked, or "" when it is."""
    manifest = artifact.manifest
    if steps == 0:
        return "decode not checked: --decode-steps 0"
    if manifest.with_past is None:
        return "decode not checked: a prefill-only export (export --with-past to generate)"
    if runtime != "onnxrt":
        return f"decode not checked: the {runtime} runtime has no decode loop here (onnxrt has)"
    return ""


def decode_prompt(feeds: Sequence[Feed], steps: int, artifact: ExportedArtifact) -> tuple[torch.Tensor, torch.Tensor]:
    """The longest parity feed that leaves room for `steps` more positions (left padded, as generation takes it)."""
    record = artifact.manifest.with_past
    room = record.max_positions - steps if record is not None else None
    usable = [f for f in feeds if room is None or f["input_ids"].shape[1] <= room]
    if not usable:
        raise UsageError(f"no verify input leaves room for {steps} decode steps in the model's context")
    feed = max(usable, key=lambda f: int(f["input_ids"].shape[1]))
    return torch.from_numpy(feed["input_ids"]), torch.from_numpy(feed["attention_mask"])


def failure_summary(parity: ParityReport, decode: DecodeReport | None = None) -> str:
    where = f"; first block over tolerance: {parity.first_failing_block}" if parity.first_failing_block else ""
    failures = parity.failures() + (decode.failures if decode is not None else [])
    return f"parity failed: {'; '.join(failures)}{where}"
