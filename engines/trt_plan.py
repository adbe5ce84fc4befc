"""A TensorRT plan's manifest (formats/plan_manifest) written and checked: `check_plan_compatible`
says exactly what differs from this machine before TensorRT is asked to load the plan. Pure Python.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from pathlib import Path

import onnx

from ftp_deploy.engines.trt_profile import ShapeProfile
from ftp_deploy.errors import ArtifactError, PlanCompatibilityError
from ftp_deploy.formats.export_manifest import TensorRtSection
from ftp_deploy.formats.plan_manifest import (
    PLAN_FILE,
    PLAN_MANIFEST_FILE,
    PlanManifest,
    PluginId,
    TrtEnvironment,
)

BUILD_SCRIPT = "build_engine.sh"
# How the plan is rebuilt for the machine it runs on (engines/build_plan.py); the export re-creates the ONNX file too.
BUILD_COMMAND = ("ftp-deploy", "build-plan")


def onnx_plugin_ids(model: Path) -> list[PluginId]:
    """Each distinct plugin the file's nodes ask TensorRT for (nodes with a `plugin_namespace`)."""
    graph = onnx.load(model, load_external_data=False).graph
    found = set()
    for node in graph.node:
        attributes = {a.name: a.s.decode() for a in node.attribute if a.type == onnx.AttributeProto.STRING}
        if "plugin_namespace" in attributes:
            # The parser's default version is "1" when a node names none.
            found.add(PluginId(attributes["plugin_namespace"], node.op_type, attributes.get("plugin_version", "1")))
    return sorted(found, key=lambda p: (p.namespace, p.name, p.version))


def plugin_node_count(model: Path) -> int:
    """Nodes that should become plugin layers; fewer means the parser took another route."""
    graph = onnx.load(model, load_external_data=False).graph
    return sum(any(a.name == "plugin_namespace" for a in node.attribute) for node in graph.node)


def write_plan_manifest(folder: Path, manifest: PlanManifest) -> None:
    manifest.write(folder)


def read_plan_manifest(folder: Path) -> PlanManifest:
    return PlanManifest.read(folder, f"{folder} has no {PLAN_MANIFEST_FILE}: the TensorRT plan was not built here")


def rebuild_command(folder: Path | str) -> list[str]:
    return [*BUILD_COMMAND, str(folder)]


def require_plan(folder: Path) -> None:
    """An ArtifactError, saying how to build it, where an artifact folder has no TensorRT plan."""
    if not (folder / PLAN_FILE).is_file():
        raise ArtifactError(
            f"{folder} has no TensorRT plan ({PLAN_FILE}): run ftp-deploy export --engine trt on this "
            f"machine, or build it from this artifact with {shlex.join(rebuild_command(folder))}"
        )


def check_plan_compatible(manifest: PlanManifest, environment: TrtEnvironment, folder: Path | None = None) -> None:
    """Refuse a plan built for another TensorRT release, GPU model or compute capability.

    TensorRT plans are specific to the TensorRT release and the GPU model (not just its compute
    capability) unless built as version- or hardware-compatible, which these are not.
    """
    built = manifest.environment
    differs = [
        what
        for what, same in (
            ("TensorRT version", built.tensorrt_release == environment.tensorrt_release),
            ("GPU", built.gpu == environment.gpu),
            ("compute capability", built.compute_capability == environment.compute_capability),
        )
        if not same
    ]
    if differs:
        plan = folder / PLAN_FILE if folder is not None else PLAN_FILE
        raise PlanCompatibilityError(
            f"{plan} was built with TensorRT {built.tensorrt} for {built.gpu} ({built.sm}); this machine has "
            f"{environment.describe()} (a different {', '.join(differs)}): rebuild it here with "
            f"{shlex.join(rebuild_command(folder or 'ART_DIR'))}, or ftp-deploy export --engine trt"
        )


def tensorrt_section(
    profile: ShapeProfile, dtype: str, plugins: Sequence[PluginId], plan: PlanManifest | None
) -> TensorRtSection:
    """The manifest.json part that says how the artifact becomes, or became, a TensorRT engine."""
    return TensorRtSection(
        profile=profile.record(),
        dtype=dtype,
        plugins=tuple(plugins),
        build_script=BUILD_SCRIPT,
        plan_file=PLAN_FILE if plan is not None else None,
        plan_manifest=PLAN_MANIFEST_FILE if plan is not None else None,
        built_for=plan.environment if plan is not None else None,
    )
