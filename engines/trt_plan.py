"""model.plan.json: what a TensorRT plan was built from, with what and for which GPU.

A serialized engine loads only into the TensorRT release that built it and on the GPU it was
built for; TensorRT's own refusal is a log line after a slow read. The manifest lets
`check_plan_compatible` say exactly what differs before TensorRT is asked. Pure Python.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import onnx

from ftp_deploy.engines.trt_env import TrtEnvironment
from ftp_deploy.engines.trt_profile import ShapeProfile
from ftp_deploy.errors import ArtifactError, PlanCompatibilityError
from ftp_deploy.export_format import TensorRtSection
from ftp_deploy.fileio import atomic_write_json, read_versioned_json

PLAN_FILE = "model.plan"
PLAN_MANIFEST_FILE = "model.plan.json"
BUILD_SCRIPT = "build_engine.sh"
PLAN_FORMAT = "ftp-deploy/tensorrt-plan"
PLAN_FORMAT_VERSION = 1
# How the plan is rebuilt for the machine it runs on; the export re-creates the ONNX file too.
BUILD_MODULE = "ftp_deploy.engines.build_plan"


@dataclass(frozen=True)
class PluginId:
    """A TensorRT plugin as the ONNX parser looks it up: (name, version, namespace)."""

    namespace: str
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.namespace}::{self.name} (version {self.version})"

    def to_json(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "version": self.version}


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


@dataclass(frozen=True)
class PlanManifest:
    environment: TrtEnvironment
    profile: ShapeProfile
    dtype: str
    plugins: tuple[PluginId, ...]
    # "aot": the plugin kernels are in the plan (any TensorRT runtime loads it, trtexec included);
    # "jit": the plan calls back into Python, so only a process that registered the plugins runs it.
    plugin_implementation: str
    plan_sha256: str
    onnx_sha256: str

    def to_json(self) -> dict[str, Any]:
        return {
            "format": PLAN_FORMAT,
            "format_version": PLAN_FORMAT_VERSION,
            "plan_file": PLAN_FILE,
            "environment": self.environment.to_json(),
            "profile": self.profile.to_json(),
            "dtype": self.dtype,
            "plugins": [p.to_json() for p in self.plugins],
            "plugin_implementation": self.plugin_implementation,
            "sha256": {"plan": self.plan_sha256, "onnx": self.onnx_sha256},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanManifest:
        env = data["environment"]
        major, minor = env["compute_capability"]
        return cls(
            environment=TrtEnvironment(str(env["tensorrt"]), str(env["gpu"]), (int(major), int(minor))),
            profile=ShapeProfile.from_json(data["profile"]),
            dtype=str(data["dtype"]),
            plugins=tuple(PluginId(p["namespace"], p["name"], p["version"]) for p in data["plugins"]),
            plugin_implementation=str(data["plugin_implementation"]),
            plan_sha256=str(data["sha256"]["plan"]),
            onnx_sha256=str(data["sha256"]["onnx"]),
        )


def write_plan_manifest(folder: Path, manifest: PlanManifest) -> None:
    atomic_write_json(folder / PLAN_MANIFEST_FILE, manifest.to_json())


def read_plan_manifest(folder: Path) -> PlanManifest:
    return read_versioned_json(
        folder / PLAN_MANIFEST_FILE,
        PLAN_FORMAT,
        PLAN_FORMAT_VERSION,
        "TensorRT plan manifest",
        missing=f"{folder} has no {PLAN_MANIFEST_FILE}: the TensorRT plan was not built here",
        parse=PlanManifest.from_json,
    )


def rebuild_command(folder: Path | str) -> list[str]:
    return ["python3", "-m", BUILD_MODULE, str(folder)]


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
        profile=profile.to_json(),
        dtype=dtype,
        plugins=[p.to_json() for p in plugins],
        build_script=BUILD_SCRIPT,
        plan_file=PLAN_FILE if plan is not None else None,
        plan_manifest=PLAN_MANIFEST_FILE if plan is not None else None,
        built_for=plan.environment.to_json() if plan is not None else None,
    )
