"""`ftp-deploy build-plan ART_DIR`: build model.plan for this machine from an exported artifact.

This is how an `ftp-deploy export --engine trt --onnx-only` artifact becomes a TensorRT engine on
the machine that will run it (its build_engine.sh runs this). trtexec cannot do the build: the
ftp::TokenCompact / ftp::TokenScatter plugins are Python plugins (`tensorrt.plugin`), registered
by importing Python code, and trtexec loads plugins only from shared libraries
(--staticPlugins / --dynamicPlugins). Without them registered, TensorRT's parser would quietly
inline the ops' ONNX function bodies instead (the builder refuses such a network). The plan this
builds holds the plugins' AOT kernels (TensorRT >= 10.9), so trtexec can then load and time it.

The folder is updated in place, each file atomically: model.plan, model.plan.json, and last
manifest.json with the new files' hashes; if interrupted, manifest.json still describes the old
files, `ftp-deploy verify` reports the difference and running this again repairs it.

The build needs TensorRT and a GPU; without them it refuses before reading the folder.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from ftp_deploy.engines.trt_builder import PURPOSE, write_plan
from ftp_deploy.engines.trt_env import require_tensorrt_gpu
from ftp_deploy.engines.trt_plan import tensorrt_section
from ftp_deploy.engines.trt_profile import ShapeProfile
from ftp_deploy.errors import ArtifactError
from ftp_deploy.formats.export_manifest import manifest_mismatches, read_manifest, write_manifest
from ftp_deploy.formats.plan_manifest import PLAN_FILE, PLAN_MANIFEST_FILE, PlanManifest


def build_artifact_plan(art_dir: Path, timing_cache: Path | None = None) -> PlanManifest:
    """Build `art_dir`'s model.onnx with the optimization profile its manifest names."""
    require_tensorrt_gpu(PURPOSE)
    manifest = read_manifest(art_dir)
    # The plan files are about to be replaced: a build interrupted before the manifest was
    # rewritten leaves them unlisted, and that must not block the rebuild.
    rebuilt = (f"{PLAN_FILE} ", f"{PLAN_MANIFEST_FILE} ")
    problems = [p for p in manifest_mismatches(art_dir) if not p.startswith(rebuilt)]
    if problems:
        raise ArtifactError(f"{art_dir} does not match its manifest: {'; '.join(problems)}")
    if manifest.tensorrt is None:
        raise ArtifactError(
            f"{art_dir} was exported for ONNX Runtime; export it with ftp-deploy export --engine trt --onnx-only"
        )
    profile = ShapeProfile.from_record(manifest.tensorrt.profile)
    plan = write_plan(art_dir, profile, manifest.dtype, timing_cache)
    section = tensorrt_section(profile, manifest.dtype, plan.plugins, plan)
    write_manifest(art_dir, replace(manifest, engine="trt", tensorrt=section))
    return plan
