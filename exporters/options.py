"""The export options and their choices, importable without torch (the command line lists them in --help)."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path

from ftp_deploy.errors import UsageError
from ftp_deploy.formats.export_manifest import QUANTIZED_BITS
from ftp_deploy.placement import DEFAULT_DEVICE, DEFAULT_DTYPE

ENGINES = ("onnx", "trt")
# export --triton-repo: the ONNX Runtime model's max_batch_size (exporters/triton_repo).
DEFAULT_MAX_BATCH = 8
# torch.onnx's dynamo exporter translates to opset 18 and converts upwards; these are the
# versions exported routed models were checked and run with (tests/test_onnx_export.py).
SUPPORTED_OPSETS = (18, 19, 20, 21, 22, 23)
DEFAULT_OPSET = 18
# How the prefill's attention is written: "fused" as ONNX Runtime's com.microsoft.GroupQueryAttention
# (memory linear in the prompt; ONNX Runtime only), "standard" with plain ONNX ops (what TensorRT's
# parser takes). Each engine has its default: onnx fused, trt standard.
ATTENTION_FORMS = ("fused", "standard")
ENGINE_ATTENTION = {"onnx": "fused", "trt": "standard"}
# How the prefill's attention is written: "fused" as ONNX Runtime's com.microsoft.GroupQueryAttention
# (memory linear in the prompt; ONNX Runtime only), "standard" with plain ONNX ops (what TensorRT's
# parser takes). Each engine has its default: onnx fused, trt standard.
ATTENTION_FORMS = ("fused", "standard")
ENGINE_ATTENTION = {"onnx": "fused", "trt": "standard"}


@dataclass(frozen=True)
class GraphOptions:
    """What the exported graph is; `ExportSpec` (what is traced) and `ExportOptions` (the command) share them."""

    dtype: str = DEFAULT_DTYPE
    opset: int = DEFAULT_OPSET
    dense: bool = False  # the unrouted base model: the baseline
    last_token_logits: bool = False
    debug_outputs: bool = False
    # Optimum's text-generation-with-past: the prefill also returns every layer's KV cache, and a
    # decode graph (decoder.onnx) continues from it one token at a time.
    with_past: bool = False
    # One of ATTENTION_FORMS, or None for the engine's own (ENGINE_ATTENTION).
    attention: str | None = None
    # Weight-only integer blocks (exporters/quantize.py), in the spirit of onnxruntime-genai's `-p int4`;
    # None stores the weights in `dtype`.
    quantize: str | None = None


@dataclass(frozen=True)
class ExportOptions(GraphOptions):
    """One export, as `ftp-deploy export` takes it: its fields are the command's options and defaults."""

    engine: str = "onnx"
    model: str | None = None  # the base model, if not the one the run names (checked to match)
    overwrite: bool = False
    trust_remote_code: bool = False
    # Where the PyTorch reference that validates the graph runs; the graph itself is traced on the
    # CPU, and the reference computes in the precision of `dtype`.
    device: str = DEFAULT_DEVICE
    # --engine trt: the optimization profile's (batch, sequence) range (None: engines/trt_profile's
    # default) and whether to stop at the TensorRT-ready ONNX and its build script.
    min_shape: tuple[int, int] | None = None
    opt_shape: tuple[int, int] | None = None
    max_shape: tuple[int, int] | None = None
    onnx_only: bool = False
    # Also add the exported graphs to this Triton Inference Server model repository.
    triton_repo: Path | None = None
    triton_max_batch: int = DEFAULT_MAX_BATCH

    def __post_init__(self) -> None:
        """Checked when made, so a bad value fails before torch or any model loads."""
        if self.engine not in ENGINES:
            raise UsageError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.attention is not None and self.attention not in ATTENTION_FORMS:
            raise UsageError(f"unknown --attention {self.attention!r}; choose one of {', '.join(ATTENTION_FORMS)}")
        shapes = (self.min_shape, self.opt_shape, self.max_shape)
        if self.engine != "trt" and (self.onnx_only or any(shape is not None for shape in shapes)):
            raise UsageError("--onnx-only and the --*-shape options apply to --engine trt only")
        if self.quantize is not None:
            self._check_quantize(self.quantize)

    def _check_quantize(self, quantize: str) -> None:
        if quantize not in QUANTIZED_BITS:
            raise UsageError(f"unknown --quantize {quantize!r}; choose one of {', '.join(QUANTIZED_BITS)}")
        if self.engine == "trt":
            raise UsageError(
                "--quantize applies to --engine onnx only: TensorRT's ONNX parser does not take ONNX Runtime's "
                "MatMulNBits and GatherBlockQuantized"
            )
        if self.dtype != "fp32":
            raise UsageError(f"--quantize keeps fp32 activations and scales; leave --dtype at fp32, not {self.dtype}")

    def graph(self) -> dict[str, object]:
        """The GraphOptions fields, by name."""
        return {f.name: getattr(self, f.name) for f in fields(GraphOptions)}
