"""`ftp-deploy export ... --triton-repo DIR`: the exported graphs as a Triton Inference Server model repository.

For an artifact folder ART it adds to DIR:

    DIR/NAME/config.pbtxt      platform onnxruntime_onnx
    DIR/NAME/1/model.onnx      (+ model.onnx.data): ART's files, hard-linked where the filesystem allows
    DIR/NAME-trt/config.pbtxt  platform tensorrt_plan, when ART holds a built model.plan
    DIR/NAME-trt/1/model.plan
    DIR/NAME-generate/          Python backend: generation (one response a request), when ART was exported --with-past
    DIR/NAME-stream/            the same, decoupled (a response a token)
        config.pbtxt, 1/model.py (ftp_deploy/serving/model.py), 1/artifact/ (ART's files, linked)

Each config is built as tritonclient's ModelConfig protobuf (so only fields and enums Triton
knows can be written), from the inputs and outputs the ONNX file itself declares: their element
types and their dims after the batch axis (-1 where the file names an axis). Dynamic batching
is on: Triton batches only requests whose variable dims agree, so every row of a batch has the
same length, and with no padding each row routes as it would alone. The onnxruntime and
TensorRT models need NVIDIA's server container (the backends are not in the nvidia-pytriton
wheel); the two generation models run on the Python backend, which `ftp-deploy serve` runs here
(`ftp_deploy/serving/server.py`) over the same repository.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ftp_deploy.engines.trt_profile import ShapeProfile
from ftp_deploy.errors import MissingDependencyError, OutputFolderError
from ftp_deploy.exporters.options import DEFAULT_MAX_BATCH
from ftp_deploy.exporters.output_folder import staged_folder
from ftp_deploy.formats.export_manifest import DATA_FILE, MANIFEST_FILE, ExportedArtifact

CONFIG_FILE = "config.pbtxt"
VERSION = "1"
TRT_SUFFIX = "-trt"
GENERATE_SUFFIX = "-generate"  # the Python-backend generation model, one response a request
STREAM_SUFFIX = "-stream"  # the same, decoupled: a response a token
ARTIFACT_FOLDER = "artifact"  # serving/model.py's ARTIFACT_FOLDER: the export beside model.py
TEMPLATE_MODULE = "ftp_deploy.serving.model"  # the Python-backend model file, copied as 1/model.py
PIP_HINT = "pip install 'ftp-deploy[triton-server]'"
# ONNX TensorProto element types (onnx.TensorProto.DataType) to Triton's DataType names.
_TRITON_TYPES = {1: "TYPE_FP32", 7: "TYPE_INT64", 9: "TYPE_BOOL", 10: "TYPE_FP16", 16: "TYPE_BF16"}


@dataclass(frozen=True)
class GenerationOptions:
    """How the generation models are served: Triton's batch limit and batcher wait, model instances
    (each its own process with its own ONNX Runtime sessions) and their intra-op threads."""

    max_batch_size: int = 16
    instances: int = 1
    threads: int | None = None
    max_queue_delay_ms: float = 10.0


@dataclass(frozen=True)
class TritonModel:
    """One model of the repository: its folder and the file Triton loads from version 1."""

    name: str
    platform: str
    source: Path
    max_batch_size: int


def model_config_module() -> Any:
    """tritonclient's model_config_pb2, or MissingDependencyError naming the extra."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as err:
        raise MissingDependencyError(
            f"--triton-repo checks config.pbtxt against Triton's model-config protobuf: {PIP_HINT} ({err})"
        ) from err
    return model_config_pb2


def check_repository(repo: Path, name: str) -> None:
    """Refuse, before any export work, a repository that cannot take model `name`."""
    model_config_module()
    if repo.exists() and not repo.is_dir():
        raise OutputFolderError(f"--triton-repo {repo} exists and is not a folder")
    if not repo.parent.is_dir():
        raise OutputFolderError(f"cannot write --triton-repo {repo}: the folder {repo.parent} does not exist")
    for folder in (repo / name, *(repo / f"{name}{suffix}" for suffix in (TRT_SUFFIX, GENERATE_SUFFIX, STREAM_SUFFIX))):
        if folder.exists():
            raise OutputFolderError(f"the Triton repository already holds a model {folder.name!r} ({folder})")


def repository_models(artifact: ExportedArtifact, name: str, max_batch_size: int) -> list[TritonModel]:
    models = [TritonModel(name, "onnxruntime_onnx", artifact.model_path, max_batch_size)]
    section = artifact.manifest.tensorrt
    if section is not None and section.plan_file is not None:
        # A plan takes no batch beyond the optimization profile it was built with.
        plan_batch = ShapeProfile.from_record(section.profile).max_shape[0]
        models.append(
            TritonModel(f"{name}{TRT_SUFFIX}", "tensorrt_plan", artifact.folder / section.plan_file, plan_batch)
        )
    return models


def model_config(model: TritonModel, onnx_path: Path) -> Any:
    """The ModelConfig protobuf of `model`, its tensors as the ONNX file at `onnx_path` declares them."""
    import onnx

    pb2 = model_config_module()
    graph = onnx.load(onnx_path, load_external_data=False).graph
    config = pb2.ModelConfig(name=model.name, platform=model.platform, max_batch_size=model.max_batch_size)
    for tensors, add in ((graph.input, config.input.add), (graph.output, config.output.add)):
        for tensor in tensors:
            kind = tensor.type.tensor_type
            if kind.elem_type not in _TRITON_TYPES:
                raise OutputFolderError(f"{onnx_path}: {tensor.name} has ONNX element type {kind.elem_type}")
            entry = add(name=tensor.name, data_type=pb2.DataType.Value(_TRITON_TYPES[kind.elem_type]))
            # The first axis is the batch, which max_batch_size stands for.
            entry.dims.extend(dim.dim_value if dim.HasField("dim_value") else -1 for dim in kind.shape.dim[1:])
    config.dynamic_batching.SetInParent()
    if model.platform == "tensorrt_plan":
        config.instance_group.add(kind=pb2.ModelInstanceGroup.KIND_GPU, count=1)
    return config


def read_config(path: Path) -> Any:
    """A config.pbtxt parsed with Triton's ModelConfig protobuf (protobuf's ParseError on a bad file)."""
    from google.protobuf import text_format

    return text_format.Parse(path.read_text(encoding="utf-8"), model_config_module().ModelConfig())


def write_triton_repository(
    art_dir: Path, repo: Path, name: str | None = None, max_batch_size: int = DEFAULT_MAX_BATCH
) -> list[Path]:
    """Add the artifact's graphs to the repository `repo` (created if missing); the config files written.

    Each model folder appears whole or not at all (built beside it, then renamed).
    """
    from google.protobuf import text_format

    artifact = ExportedArtifact.open(art_dir)
    name = name or art_dir.name
    check_repository(repo, name)
    repo.mkdir(exist_ok=True)
    written = []
    for model in repository_models(artifact, name, max_batch_size):
        config = model_config(model, artifact.model_path)
        with staged_folder(repo / model.name) as folder:
            (folder / VERSION).mkdir()
            files = [model.source]
            if model.platform == "onnxruntime_onnx" and (artifact.folder / DATA_FILE).is_file():
                files.append(artifact.folder / DATA_FILE)  # external weights sit beside model.onnx
            for source in files:
                _link_or_copy(source, folder / VERSION / source.name)
            (folder / CONFIG_FILE).write_text(text_format.MessageToString(config), encoding="utf-8")
            if read_config(folder / CONFIG_FILE) != config:
                raise OutputFolderError(f"{model.name}/{CONFIG_FILE} does not parse back to the config written")
        written.append(repo / model.name / CONFIG_FILE)
    if artifact.manifest.with_past is not None:
        written += write_generation_models(artifact, repo, name, GenerationOptions(max_batch_size=max_batch_size))
    return written


def _link_or_copy(source: Path, target: Path) -> None:
    """A hard link costs no space for a 7B model's weights; across filesystems, a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)


def generation_config(name: str, decoupled: bool, options: GenerationOptions, artifact_dir: Path | None = None) -> Any:
    """The Python-backend generation model's ModelConfig; its tensors are `serving.triton_model`'s.

    `artifact_dir`: read the export from there (`ftp-deploy serve`); None, from `1/artifact` beside model.py.
    """
    from ftp_deploy.serving.triton_model import INPUTS, OUTPUTS

    pb2 = model_config_module()
    config = pb2.ModelConfig(name=name, backend="python", max_batch_size=options.max_batch_size)
    for spec in INPUTS:
        entry = config.input.add(name=spec.name, data_type=pb2.DataType.Value(spec.data_type), optional=spec.optional)
        entry.dims.extend(spec.dims)
        # Each request keeps its own tensors (the model batches rows itself), so prompts of any
        # length may share a batch.
        entry.allow_ragged_batch = True
    for spec in OUTPUTS:
        config.output.add(name=spec.name, data_type=pb2.DataType.Value(spec.data_type)).dims.extend(spec.dims)
    config.dynamic_batching.max_queue_delay_microseconds = round(options.max_queue_delay_ms * 1000)
    config.instance_group.add(kind=pb2.ModelInstanceGroup.KIND_CPU, count=options.instances)
    config.model_transaction_policy.decoupled = decoupled
    parameters = {"threads": "" if options.threads is None else str(options.threads)}
    if artifact_dir is not None:
        parameters["artifact_dir"] = str(artifact_dir.resolve())
    for key, value in parameters.items():
        config.parameters[key].string_value = value
    return config


def generation_names(name: str) -> tuple[str, str]:
    """The plain and the streaming generation model of export `name`."""
    return f"{name}{GENERATE_SUFFIX}", f"{name}{STREAM_SUFFIX}"


def write_generation_models(
    artifact: ExportedArtifact,
    repo: Path,
    name: str,
    options: GenerationOptions = GenerationOptions(),
    link_artifact: bool = True,
) -> list[Path]:
    """Add the generation models of a --with-past export to `repo`; the config files written.

    `link_artifact`: the export's files go into each model's `1/artifact` (a repository that stands
    alone, for NVIDIA's container too); otherwise the config points at the export folder itself.
    """
    import importlib.util

    from google.protobuf import text_format

    if artifact.manifest.with_past is None:
        raise OutputFolderError(
            f"{artifact.folder} is a prefill-only export: re-export it with --with-past to serve generation"
        )
    spec = importlib.util.find_spec(TEMPLATE_MODULE)
    if spec is None or spec.origin is None:
        raise OutputFolderError(f"cannot find {TEMPLATE_MODULE} (the Python-backend model file) in this install")
    written = []
    for model, decoupled in zip(generation_names(name), (False, True), strict=True):
        config = generation_config(model, decoupled, options, None if link_artifact else artifact.folder)
        with staged_folder(repo / model) as folder:
            (folder / VERSION).mkdir()
            shutil.copyfile(spec.origin, folder / VERSION / "model.py")
            if link_artifact:
                (folder / VERSION / ARTIFACT_FOLDER).mkdir()
                for file in (MANIFEST_FILE, *artifact.manifest.files):
                    _link_or_copy(artifact.folder / file, folder / VERSION / ARTIFACT_FOLDER / file)
            (folder / CONFIG_FILE).write_text(text_format.MessageToString(config), encoding="utf-8")
            if read_config(folder / CONFIG_FILE) != config:
                raise OutputFolderError(f"{model}/{CONFIG_FILE} does not parse back to the config written")
        written.append(repo / model / CONFIG_FILE)
    return written
