"""`ftp-deploy export --engine trt`: the ONNX artifact plus what TensorRT needs, and the plan where TensorRT runs.

The ONNX file is the one `--engine onnx` writes: every `ftp` node carries `plugin_namespace` and
`plugin_version`, so TensorRT's parser takes the registered plugins, while ONNX Runtime inlines
the model-local function bodies (DEPLOYMENT_FACTS.md). To it the artifact adds:

- a `tensorrt` manifest section: the optimization profile, the dtype (the network is strongly
  typed), the plugin ids and, once built, the plan and the machine it was built for;
- build_engine.sh, which builds the plan on the target machine and then times it with trtexec,
  with two small input files for trtexec (valid token ids at the profile's opt shape);
- with TensorRT and a GPU here (not `onnx_only`): model.plan and model.plan.json.

Why the build is a Python command and not `trtexec --onnx`: the plugins are TensorRT Python
plugins (`tensorrt.plugin`), registered by importing Python code, and trtexec loads plugins only
from shared libraries (--staticPlugins / --dynamicPlugins); without them its parser would inline
the ops' ONNX function bodies, a different and slower engine. A plan built in Python holds the
plugins' AOT kernels (TensorRT >= 10.9), so trtexec can load and time it (--loadEngine).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from ftp_deploy.engines.trt_builder import write_plan
from ftp_deploy.engines.trt_env import require_tensorrt_gpu
from ftp_deploy.engines.trt_plan import (
    BUILD_SCRIPT,
    PLAN_FILE,
    PlanManifest,
    onnx_plugin_ids,
    rebuild_command,
    tensorrt_section,
)
from ftp_deploy.engines.trt_profile import DEFAULT_PROFILE, ShapeProfile, decode_profile, format_shape
from ftp_deploy.errors import UnsupportedExportError
from ftp_deploy.exporters.options import ENGINE_ATTENTION, ExportOptions
from ftp_deploy.exporters.pipeline import ArtifactExtension, ExportResult, export_onnx
from ftp_deploy.fileio import atomic_write_bytes, atomic_write_text
from ftp_deploy.formats.export_manifest import INPUT_NAMES, MODEL_FILE, ExportManifest
from ftp_deploy.progress import NO_PROGRESS, Progress

TRTEXEC_INPUTS = {name: f"trtexec_{name}.bin" for name in INPUT_NAMES}
# Below the vocabulary of any model: trtexec's own random int64 inputs (-128..127) are not token ids.
_TRTEXEC_ID_RANGE = 32
ONNX_ONLY_HINT = (
    ", or pass --onnx-only to export the ONNX file and the script that builds the engine on the target machine"
)


@dataclass(frozen=True)
class EngineCommands:
    """The plan build (given the artifact folder) and the trtexec timing (run inside that folder)."""

    folder: Path
    build: list[str]
    benchmark: list[str]

    def shell(self) -> tuple[str, str]:
        """Both as shell lines, safely quoted, that run from any directory."""
        return shlex.join(self.build), f"cd {shlex.quote(str(self.folder))} && {shlex.join(self.benchmark)}"


def engine_commands(profile: ShapeProfile, folder: Path = Path(".")) -> EngineCommands:
    shapes = ",".join(f"{name}:{format_shape(profile.opt_shape, 'x')}" for name in INPUT_NAMES)
    inputs = ",".join(f"{name}:{file}" for name, file in TRTEXEC_INPUTS.items())
    return EngineCommands(
        folder=folder,
        build=rebuild_command(folder),
        benchmark=["trtexec", f"--loadEngine={PLAN_FILE}", f"--shapes={shapes}", f"--loadInputs={inputs}"],
    )


def build_script(profile: ShapeProfile, dtype: str) -> str:
    commands = engine_commands(profile)
    low, opt, high = (format_shape(shape, "x") for shape in (profile.min_shape, profile.opt_shape, profile.max_shape))
    return f"""#!/bin/sh
# Builds model.plan, the TensorRT engine of this folder's model.onnx ({dtype}, strongly typed), on the
# machine that will run it: an NVIDIA GPU, TensorRT >= 10.9 and pip install 'ftp-deploy[trt]'.
# Optimization profile of input_ids and attention_mask [batch, sequence]: min {low}, opt {opt}, max {high}.
#
# Not trtexec --onnx: ftp::TokenCompact and ftp::TokenScatter are TensorRT Python plugins (tensorrt.plugin),
# registered by importing Python code, and trtexec loads plugins only from shared libraries
# (--staticPlugins/--dynamicPlugins). Without them its ONNX parser inlines the ops' ONNX function bodies
# instead: a different, slower engine. The Python build registers the plugins before parsing.
set -eu
cd "$(dirname "$0")"
{shlex.join(commands.build)}

# The plan holds the plugins' AOT kernels, so trtexec loads it without Python. It times the opt shape
# on fixed valid inputs: a speed check; ftp-deploy verify --runtime trt checks the outputs.
if command -v trtexec >/dev/null 2>&1; then
    {shlex.join(commands.benchmark)}
else
    echo "trtexec is not on PATH; to time the plan, run here: {shlex.join(commands.benchmark)}"
fi
"""


def _write_trtexec_inputs(folder: Path, profile: ShapeProfile) -> None:
    """Raw little-endian int64 tensors at the opt shape, as trtexec --loadInputs reads them."""
    batch, seq_len = profile.opt_shape
    ids = (np.arange(batch * seq_len, dtype="<i8") % _TRTEXEC_ID_RANGE).reshape(batch, seq_len)
    arrays = {"input_ids": ids, "attention_mask": np.ones((batch, seq_len), dtype="<i8")}
    for name, file in TRTEXEC_INPUTS.items():
        atomic_write_bytes(folder / file, arrays[name].tobytes())


def trt_extension(
    profile: ShapeProfile, onnx_only: bool, timing_cache: Path | None, progress: Progress
) -> ArtifactExtension:
    """What export_onnx adds to the staged folder for TensorRT (and, unless `onnx_only`, builds)."""

    def extend(folder: Path, manifest: ExportManifest) -> ExportManifest:
        plan: PlanManifest | None = None
        if not onnx_only:
            with progress.phase(f"build the TensorRT engine ({profile.range_text()})"):
                plan = write_plan(folder, profile, manifest.dtype, timing_cache)
        _write_trtexec_inputs(folder, profile)
        atomic_write_text(folder / BUILD_SCRIPT, build_script(profile, manifest.dtype))
        plugins = plan.plugins if plan is not None else tuple(onnx_plugin_ids(folder / MODEL_FILE))
        section = tensorrt_section(profile, manifest.dtype, plugins, plan)
        if manifest.with_past is not None:
            thousandths = [0] * len(manifest.schedule.sparsity_thousandths) if manifest.graph == "dense" else None
            past = decode_profile(profile, thousandths or manifest.schedule.sparsity_thousandths, manifest.with_past)
            section = replace(section, decode_profile=past)
        return replace(manifest, engine="trt", tensorrt=section)

    return extend


@dataclass(frozen=True)
class TrtOptions:
    """What --engine trt adds to the export options: the optimization profile, and whether to build here."""

    profile: ShapeProfile = DEFAULT_PROFILE
    onnx_only: bool = False
    timing_cache: Path | None = None


def export_trt(
    run_dir: Path,
    out: Path,
    options: ExportOptions | None = None,
    trt: TrtOptions | None = None,
    *,
    progress: Progress = NO_PROGRESS,
    **fields: Any,
) -> ExportResult:
    """export_onnx plus the TensorRT additions; without `trt.onnx_only`, also the plan (TensorRT and a GPU).

    `fields` replace those of `options` by name, as in export_onnx. A missing TensorRT or GPU is
    reported before the (slow) ONNX export starts.
    """
    trt = trt or TrtOptions()
    opts = replace(options or ExportOptions(), **fields)
    if opts.attention not in (None, ENGINE_ATTENTION["trt"]):
        # TensorRT's ONNX parser has no com.microsoft.GroupQueryAttention: its graph keeps standard ops.
        raise UnsupportedExportError(
            f"--engine trt writes the prefill's attention in standard ONNX ops, not --attention {opts.attention}"
        )
    opts = replace(opts, attention=ENGINE_ATTENTION["trt"])
    if opts.with_past and not trt.onnx_only:
        # The plan builder makes one engine from model.onnx; a decode engine is not built yet.
        raise UnsupportedExportError("--with-past with --engine trt needs --onnx-only: no decode engine is built yet")
    if not trt.onnx_only:
        require_tensorrt_gpu("--engine trt", hint=ONNX_ONLY_HINT)
    extension = trt_extension(trt.profile, trt.onnx_only, trt.timing_cache, progress)
    return export_onnx(run_dir, out, opts, extend=extension, progress=progress)
