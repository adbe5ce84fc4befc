"""The exported-artifact format, below both exporters/ and engines/: file and input names, manifest.json.

manifest.json says what was exported from what, and holds the sha256 of every file. The exporter
writes it as an `ExportManifest`; engines, verify and the benchmarks read it back typed, through
`ExportedArtifact.open` where the files must match it. Torch-free, and onnx loads only when a
folder is opened.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from ftp_deploy.errors import ArtifactError
from ftp_deploy.fileio import atomic_write_json, read_versioned_json, sha256_file

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = "ftp-deploy/onnx-export"
MANIFEST_VERSION = 1
# The graph inputs, both [batch, sequence] int64; the TensorRT optimization profile names them too.
INPUT_NAMES = ("input_ids", "attention_mask")
EXPORT_DTYPES = ("fp32", "fp16", "bf16")
# What ONNX Runtime's CPU provider has kernels for; a bf16 file runs there only widened to fp32.
CPU_NATIVE_DTYPES = ("fp32", "fp16")


def indices_name(block: int) -> str:
    """The debug output holding the positions block `block` kept."""
    return f"indices_{block}"


def hidden_name(block: int) -> str:
    """The debug output holding the hidden state leaving block `block`."""
    return f"hidden_{block}"


@dataclass(frozen=True)
class SourceRun:
    """The run folder exported, and the sha256 of its config (which names the router file's sha256)."""

    path: str
    config_sha256: str


@dataclass(frozen=True)
class BaseModelRecord:
    """The base model's fingerprint (models.ModelRef's fields) and where the export loaded it from."""

    ref: str
    model_type: str
    num_layers: int
    hidden_size: int
    config_hash: str
    loaded_from: str


@dataclass(frozen=True)
class ValidationRecord:
    """What export validation measured: the largest differences over every validation input."""

    lengths: tuple[int, ...]
    batch: int
    widened_to_fp32: bool
    logits_max_abs_diff: float
    routing_agreement: float | None
    hidden_max_abs_diff: float | None


@dataclass(frozen=True)
class TensorRtSection:
    """How the artifact becomes, or became, a TensorRT engine (engines/trt_plan.tensorrt_section).

    `profile` and `built_for` hold ShapeProfile's and TrtEnvironment's JSON, which engines/ reads;
    the plan fields are None until a plan is built.
    """

    profile: dict[str, Any]
    dtype: str
    plugins: list[dict[str, str]]
    build_script: str
    plan_file: str | None = None
    plan_manifest: str | None = None
    built_for: dict[str, Any] | None = None
    strongly_typed: bool = True  # precision comes from the ONNX file's types, not builder flags

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorRtSection:
        return cls(**data)


@dataclass(frozen=True)
class ExportManifest:
    """manifest.json, typed. `files` (name -> sha256) is filled in by `write_manifest`.

    `inputs` and `outputs` map each graph tensor to its named dynamic axes; `tensorrt` is there
    for --engine trt.
    """

    engine: str
    graph: str  # "routed" or "dense"
    source_run: SourceRun
    base_model: BaseModelRecord
    sparsity_thousandths: tuple[int, ...]
    sparsity_den: int
    router: dict[str, Any]
    routing_mode: str
    op_contract: dict[str, Any]
    dtype: str
    opset: int
    last_token_logits: bool
    debug_outputs: bool
    inputs: dict[str, dict[str, str]]
    outputs: dict[str, dict[str, str]]
    tolerance: dict[str, float]
    validation: ValidationRecord
    smoke_inference: dict[str, Any]
    versions: dict[str, str]
    model_file: str = MODEL_FILE
    tensorrt: TensorRtSection | None = None
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": MANIFEST_FORMAT,
            "format_version": MANIFEST_VERSION,
            "engine": self.engine,
            "graph": self.graph,
            "model_file": self.model_file,
            "source_run": asdict(self.source_run),
            "base_model": asdict(self.base_model),
            "schedule": {"sparsity_thousandths": list(self.sparsity_thousandths), "sparsity_den": self.sparsity_den},
            "router": self.router,
            "routing_mode": self.routing_mode,
            "op_contract": self.op_contract,
            "dtype": self.dtype,
            "opset": self.opset,
            "last_token_logits": self.last_token_logits,
            "debug_outputs": self.debug_outputs,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "tolerance": self.tolerance,
            "validation": {**asdict(self.validation), "lengths": list(self.validation.lengths)},
            "smoke_inference": self.smoke_inference,
            "versions": self.versions,
        }
        if self.tensorrt is not None:
            data["tensorrt"] = self.tensorrt.to_json()
        data["files"] = self.files
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ExportManifest:
        """The manifest `data` describes (KeyError, TypeError or ValueError where it is incomplete);
        read_manifest checks the format version first."""
        validation = dict(data["validation"])
        return cls(
            engine=str(data["engine"]),
            graph=str(data["graph"]),
            source_run=SourceRun(**data["source_run"]),
            base_model=BaseModelRecord(**data["base_model"]),
            sparsity_thousandths=tuple(int(n) for n in data["schedule"]["sparsity_thousandths"]),
            sparsity_den=int(data["schedule"]["sparsity_den"]),
            router=dict(data["router"]),
            routing_mode=str(data["routing_mode"]),
            op_contract=dict(data["op_contract"]),
            dtype=str(data["dtype"]),
            opset=int(data["opset"]),
            last_token_logits=bool(data["last_token_logits"]),
            debug_outputs=bool(data["debug_outputs"]),
            inputs=dict(data["inputs"]),
            outputs=dict(data["outputs"]),
            tolerance=dict(data["tolerance"]),
            validation=ValidationRecord(**{**validation, "lengths": tuple(validation["lengths"])}),
            smoke_inference=dict(data["smoke_inference"]),
            versions=dict(data["versions"]),
            model_file=str(data.get("model_file", MODEL_FILE)),
            tensorrt=TensorRtSection.from_json(data["tensorrt"]) if data.get("tensorrt") is not None else None,
            files={str(name): str(digest) for name, digest in data.get("files", {}).items()},
        )


def write_manifest(folder: Path, manifest: ExportManifest) -> ExportManifest:
    """Write `manifest` with the hash of every other file in `folder`; returns what was written."""
    files = {path.name: sha256_file(path) for path in sorted(folder.iterdir()) if path.name != MANIFEST_FILE}
    written = replace(manifest, files=files)
    atomic_write_json(folder / MANIFEST_FILE, written.to_json())
    return written


def read_manifest(folder: Path) -> ExportManifest:
    """The folder's manifest.json; an ArtifactError for another format version or a malformed field."""
    return read_versioned_json(
        folder / MANIFEST_FILE,
        MANIFEST_FORMAT,
        MANIFEST_VERSION,
        "export manifest",
        missing=f"{folder} is not an exported artifact: {MANIFEST_FILE} is missing",
        parse=ExportManifest.from_json,
    )


def manifest_mismatches(folder: Path) -> list[str]:
    """Every file the manifest lists that is missing or differs, and every file it does not list."""
    listed = read_manifest(folder).files
    present = {path.name for path in folder.iterdir() if path.name != MANIFEST_FILE}
    problems = [f"{name} is missing" for name in sorted(set(listed) - present)]
    problems += [f"{name} is not in the manifest" for name in sorted(present - set(listed))]
    problems += [
        f"{name} does not match its sha256"
        for name in sorted(set(listed) & present)
        if sha256_file(folder / name) != listed[name]
    ]
    return problems


@dataclass(frozen=True)
class ExportedArtifact:
    """An exported folder whose files match its manifest."""

    folder: Path
    manifest: ExportManifest

    @classmethod
    def open(cls, folder: Path) -> ExportedArtifact:
        if not folder.is_dir():
            raise ArtifactError(f"artifact folder not found: {folder}")
        manifest = read_manifest(folder)
        problems = manifest_mismatches(folder)
        if problems:
            raise ArtifactError(f"{folder} does not match its manifest: {'; '.join(problems)}")
        artifact = cls(folder, manifest)
        import onnx

        try:
            onnx.load(artifact.model_path, load_external_data=False)
        except Exception as err:  # protobuf's DecodeError and OSError alike: the file is not an ONNX model
            raise ArtifactError(f"{artifact.model_path} does not load as an ONNX model: {err}") from err
        return artifact

    @property
    def model_path(self) -> Path:
        return self.folder / self.manifest.model_file
