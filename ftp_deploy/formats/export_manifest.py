"""The exported artifact, below both exporters/ and engines/: file and input names, manifest.json.

manifest.json says what was exported from what, and holds the sha256 of every file. The exporter
writes it as an `ExportManifest`; engines, verify, generation and the benchmarks read it back
typed, through `ExportedArtifact.open` where the files must match it. Torch-free, and onnx loads
only when a folder is opened.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from ftp_deploy.errors import ArtifactError
from ftp_deploy.fileio import sha256_file
from ftp_deploy.formats.plan_manifest import PluginId, ProfileRecord, TrtEnvironment
from ftp_deploy.formats.record import Document
from ftp_deploy.formats.routed_config import CONFIG_FILE, RouterRecord

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
# The decode graph of a --with-past export; its weights are the same bytes of DATA_FILE.
DECODER_FILE = "decoder.onnx"
# The two graphs of an in-place --with-past export under one If over one copy of the weights (exporters/merge.py):
# what generation runs. Its input `decode` (a bool) picks the branch.
GENERATOR_FILE = "generator.onnx"
BRANCH_INPUT = "decode"
MANIFEST_FILE = "manifest.json"
# The graph inputs, both [batch, sequence] int64; the TensorRT optimization profile names them too.
INPUT_NAMES = ("input_ids", "attention_mask")
# The decode graph's own inputs besides the per-layer cache: one token per row and its position.
DECODE_INPUT_NAMES = ("input_ids", "position_ids")
CACHE_PARTS = ("key", "value", "valid")
# The two forms of a decode graph's cache (WithPastRecord.cache):
# - "concat": past [B, kv_heads, P_l, head_dim] with slot validity [B, P_l] in, one slot more out (a new
#   tensor every step); standard ONNX ops, what TensorRT parses.
# - "inplace": capacity-sized buffers [B, kv_heads, C_l, head_dim] and each row's cached count [B] (int32)
#   in; com.microsoft.GroupQueryAttention writes the new key and value at that count, into the buffer bound
#   as both past and present (no copy). Each row's cached entries are packed at slots [0, count).
CONCAT_CACHE, INPLACE_CACHE = "concat", "inplace"
INPLACE_PARTS = ("key", "value", "length")
CACHE_FORMS = (CONCAT_CACHE, INPLACE_CACHE)
# What ONNX Runtime's CPU provider has kernels for; a bf16 file runs there only widened to fp32.
CPU_NATIVE_DTYPES = ("fp32", "fp16")
# --quantize: weight-only integer blocks, as onnxruntime-genai's builder names its precisions (-p int4).
QUANTIZED_BITS = {"int4": 4, "int8": 8}
# The domain of ONNX Runtime's MatMulNBits and GatherBlockQuantized (contrib ops: TensorRT does not parse them).
QUANTIZED_DOMAIN = "com.microsoft"
ONNX_RUNTIME, TENSORRT = "onnxruntime", "tensorrt"
# A graph of standard ONNX ops (and the ftp nodes, plugins in TensorRT, functions in ONNX Runtime) runs in
# both; a prefill with fused attention holds com.microsoft.GroupQueryAttention, which only ONNX Runtime has.
STANDARD_RUNTIMES = (ONNX_RUNTIME, TENSORRT)
FUSED_RUNTIMES = (ONNX_RUNTIME,)


def prefill_runtimes(attention: str) -> tuple[str, ...]:
    """The runtimes that run a prefill graph whose attention has the form `attention` ("fused" or "standard")."""
    return FUSED_RUNTIMES if attention == "fused" else STANDARD_RUNTIMES


def indices_name(block: int) -> str:
    """The debug output holding the positions block `block` kept."""
    return f"indices_{block}"


def hidden_name(block: int) -> str:
    """The debug output holding the hidden state leaving block `block`."""
    return f"hidden_{block}"


def past_name(layer: int, part: str) -> str:
    """A decode graph input of layer `layer`'s cache: key/value [B, kv_heads, P_l, head_dim] and valid [B, P_l]
    (the concat form), or key/value [B, kv_heads, C_l, head_dim] and length [B] (in place)."""
    return f"past.{layer}.{part}"


def present_name(layer: int, part: str) -> str:
    """A graph output of layer `layer`'s cache after the graph ran (the prefill's K_l slots, or one more)."""
    return f"present.{layer}.{part}"


def quantized_names(weight: str, bits: int) -> tuple[str, str, str]:
    """A quantized weight's blocks, scales and zero points, named as onnxruntime's quantizer names them."""
    return f"{weight}_Q{bits}", f"{weight}_scales", f"{weight}_zero_points"


def cache_names(
    num_layers: int, name: Callable[[int, str], str], parts: tuple[str, ...] = CACHE_PARTS
) -> tuple[str, ...]:
    """Every layer's cache tensor names (key, value and valid by default), layer by layer."""
    return tuple(name(layer, part) for layer in range(num_layers) for part in parts)


@dataclass(frozen=True)
class GraphRecord:
    """One ONNX graph of the artifact: its file, the external data (weights) it reads, its tensors' axes, the
    sha256 of both files (the graph file alone would not tell two routers of one schedule apart), and the
    runtimes whose parsers take its ops (a manifest written before the fused attention: both)."""

    file: str
    data_file: str
    inputs: dict[str, dict[str, str]]
    outputs: dict[str, dict[str, str]]
    sha256: str = ""
    data_sha256: str = ""
    runtimes: tuple[str, ...] = STANDARD_RUNTIMES


@dataclass(frozen=True)
class WithPastRecord:
    """What a generation runtime needs beyond the graphs: cache geometry, context length, tokenizer files."""

    num_layers: int
    kv_heads: int
    head_dim: int
    max_positions: int  # the model's context: positions beyond it have no rotary training
    eos_token_ids: tuple[int, ...]
    pad_token_id: int
    tokenizer_files: tuple[str, ...]
    # The decode graph's cache form (CONCAT_CACHE or INPLACE_CACHE); manifests from before the in-place form: concat.
    cache: str = CONCAT_CACHE

    @property
    def inplace(self) -> bool:
        return self.cache == INPLACE_CACHE

    def past_parts(self) -> tuple[str, ...]:
        """The decode graph's cache inputs per layer: key, value and validity (concat) or length (in place)."""
        return INPLACE_PARTS if self.inplace else CACHE_PARTS

    def present_parts(self) -> tuple[str, ...]:
        """The decode graph's cache outputs per layer (in place: the same buffers, so no length)."""
        return INPLACE_PARTS[:2] if self.inplace else CACHE_PARTS


@dataclass(frozen=True)
class QuantizationRecord:
    """--quantize: the base model's Linear and embedding weights as blocks of `bits`-bit integers (asymmetric,
    an fp32 scale and a zero point per block of `block_size` along K), computed by MatMulNBits at
    `accuracy_level` (4: int8 activations, the fastest on CPU); the embedding is GatherBlockQuantized over
    the same blocks, so a tied LM head and embedding are stored once. Activations and the router stay fp32."""

    precision: str
    bits: int
    block_size: int = 32
    accuracy_level: int = 4

    @classmethod
    def of(cls, precision: str) -> QuantizationRecord:
        return cls(precision, QUANTIZED_BITS[precision])


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
class ScheduleRecord:
    """Each block's sparsity in thousandths (of `sparsity_den`): what the graph's kept counts are made of."""

    sparsity_thousandths: tuple[int, ...]
    sparsity_den: int


@dataclass(frozen=True)
class ValidationRecord:
    """What export validation measured: the largest differences over every validation input."""

    lengths: tuple[int, ...]
    batch: int
    widened_to_fp32: bool
    logits_max_abs_diff: float
    routing_agreement: float | None
    hidden_max_abs_diff: float | None
    # --with-past: the decode graph's logits against PyTorch's cached decode, over `decode_steps` steps.
    decode_logits_max_abs_diff: float | None = None
    decode_steps: int | None = None


@dataclass(frozen=True)
class TensorRtSection:
    """How the artifact becomes, or became, a TensorRT engine (engines/trt_plan.tensorrt_section).

    The plan fields are None until a plan is built.
    """

    profile: ProfileRecord
    dtype: str
    plugins: tuple[PluginId, ...]
    build_script: str
    plan_file: str | None = None
    plan_manifest: str | None = None
    built_for: TrtEnvironment | None = None
    strongly_typed: bool = True  # precision comes from the ONNX file's types, not builder flags
    # --with-past: the decode graph's profile, every input's min/opt/max shape (engines/trt_profile.decode_profile).
    decode_profile: dict[str, Any] | None = None


@dataclass(frozen=True)
class ExportManifest(Document):
    """manifest.json, typed. `files` (name -> sha256) is filled in by `write_manifest`.

    `inputs` and `outputs` map each graph tensor to its named dynamic axes; `tensorrt` is there
    for --engine trt.
    """

    FILE: ClassVar[str] = MANIFEST_FILE
    FORMAT: ClassVar[str] = "ftp-deploy/onnx-export"
    # Version 2 added `graphs` (every graph file with its sha256) and `with_past`.
    VERSION: ClassVar[int] = 2
    DESCRIPTION: ClassVar[str] = "export manifest"

    engine: str
    graph: str  # "routed" or "dense"
    source_run: SourceRun
    base_model: BaseModelRecord
    schedule: ScheduleRecord
    router: RouterRecord
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
    # "prefill" (always; the model file) and, for --with-past, "decode"; sha256s filled by write_manifest.
    graphs: dict[str, GraphRecord] = field(default_factory=dict)
    with_past: WithPastRecord | None = None
    # How the prefill's attention is written (exporters/options.ATTENTION_FORMS); older manifests: standard.
    attention: str = "standard"
    # None: the weights are stored in `dtype` (every manifest before --quantize existed).
    quantization: QuantizationRecord | None = None
    files: dict[str, str] = field(default_factory=dict)

    @property
    def graph_hashes(self) -> dict[str, str]:
        """Each graph's and its weights' sha256 by role: what ties a generation cache to the export that made it."""
        return {role: f"{record.sha256}/{record.data_sha256}" for role, record in self.graphs.items()}


def write_manifest(folder: Path, manifest: ExportManifest) -> ExportManifest:
    """Write `manifest` with the hash of every other file in `folder`; returns what was written."""
    files = {path.name: sha256_file(path) for path in sorted(folder.iterdir()) if path.name != MANIFEST_FILE}
    graphs = {
        role: replace(record, sha256=files[record.file], data_sha256=files[record.data_file])
        for role, record in manifest.graphs.items()
    }
    written = replace(manifest, files=files, graphs=graphs)
    written.write(folder)
    return written


def read_manifest(folder: Path) -> ExportManifest:
    """The folder's manifest.json; an ArtifactError for another format version or a malformed field."""
    return ExportManifest.read(folder, f"{folder} is not an exported artifact: {MANIFEST_FILE} is missing")


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

    def source_run(self, otherwise: str) -> Path:
        """The run folder this export was made from, unchanged since (its config's sha256 is the manifest's).

        `otherwise` ends the ArtifactError for a run folder that is gone or changed: what to do instead.
        """
        run = Path(self.manifest.source_run.path)
        config = run / CONFIG_FILE
        if not config.is_file() or sha256_file(config) != self.manifest.source_run.config_sha256:
            raise ArtifactError(
                f"the run folder {run} that {self.folder} was exported from is gone or changed; {otherwise}"
            )
        return run

    def graph_path(self, role: str) -> Path:
        """The file of the graph `role` ("prefill", "decode", "generate"); an ArtifactError if the export has none."""
        record = self.manifest.graphs.get(role)
        if record is None:
            hint = " (export with --with-past for generation)" if role == "decode" else ""
            raise ArtifactError(f"{self.folder} has no {role} graph{hint}")
        return self.folder / record.file
