"""model.plan.json: what a TensorRT plan was built from, with what and for which GPU; and the records it
shares with manifest.json's TensorRT section (the environment, the shape profile, the plugins).

A serialized engine loads only into the TensorRT release that built it and on the GPU it was built
for; TensorRT's own refusal is a log line after a slow read, so this record lets engines/trt_plan say
exactly what differs before TensorRT is asked. Pure data: no TensorRT, torch or onnx.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ftp_deploy.formats.record import Document

PLAN_FILE = "model.plan"
PLAN_MANIFEST_FILE = "model.plan.json"


@dataclass(frozen=True)
class TrtEnvironment:
    """The TensorRT version and GPU a plan is built for, or a machine has (engines/trt_env reads a machine's)."""

    tensorrt: str
    gpu: str
    compute_capability: tuple[int, int]

    @property
    def sm(self) -> str:
        major, minor = self.compute_capability
        return f"sm_{major}{minor}"

    @property
    def tensorrt_release(self) -> tuple[int, ...]:
        """major.minor.patch: a plan loads only into the TensorRT release that built it.

        A fourth component (the build number, as in 10.13.0.35) is left out of the comparison.
        """
        return tuple(int(part) for part in self.tensorrt.split(".")[:3] if part.isdigit())

    def describe(self) -> str:
        return f"TensorRT {self.tensorrt} and {self.gpu} ({self.sm})"


@dataclass(frozen=True)
class PluginId:
    """A TensorRT plugin as the ONNX parser looks it up: (name, version, namespace)."""

    namespace: str
    name: str
    version: str

    def __str__(self) -> str:
        return f"{self.namespace}::{self.name} (version {self.version})"


@dataclass(frozen=True)
class ProfileRecord:
    """An optimization profile as the files hold it: the inputs it shapes and their (batch, sequence) range
    (engines/trt_profile.ShapeProfile checks and uses it)."""

    inputs: tuple[str, ...]
    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]


@dataclass(frozen=True)
class PlanHashes:
    plan: str
    onnx: str


@dataclass(frozen=True)
class PlanManifest(Document):
    FILE: ClassVar[str] = PLAN_MANIFEST_FILE
    FORMAT: ClassVar[str] = "ftp-deploy/tensorrt-plan"
    VERSION: ClassVar[int] = 1
    DESCRIPTION: ClassVar[str] = "TensorRT plan manifest"

    environment: TrtEnvironment
    profile: ProfileRecord
    dtype: str
    plugins: tuple[PluginId, ...]
    # "aot": the plugin kernels are in the plan (any TensorRT runtime loads it, trtexec included);
    # "jit": the plan calls back into Python, so only a process that registered the plugins runs it.
    plugin_implementation: str
    sha256: PlanHashes
    plan_file: str = PLAN_FILE
