"""The export options and their choices, importable without torch (the command line lists them in --help)."""

from __future__ import annotations

from dataclasses import dataclass

ENGINES = ("onnx", "trt")
# torch.onnx's dynamo exporter translates to opset 18 and converts upwards; these are the
# versions exported routed models were checked and run with (tests/test_onnx_export.py).
SUPPORTED_OPSETS = (18, 19, 20, 21, 22, 23)
DEFAULT_OPSET = 18
# How the prefill's attention is written: "fused" as ONNX Runtime's com.microsoft.GroupQueryAttention
# (memory linear in the prompt; ONNX Runtime only), "standard" with plain ONNX ops (what TensorRT's
# parser takes). Each engine has its default: onnx fused, trt standard.
ATTENTION_FORMS = ("fused", "standard")
ENGINE_ATTENTION = {"onnx": "fused", "trt": "standard"}


@dataclass(frozen=True)
class ExportOptions:
    """What one export makes, as `ftp-deploy export` takes it (the same names as its options)."""

    model: str | None = None  # the base model, if not the one the run names (checked to match)
    dtype: str = "fp32"
    opset: int = DEFAULT_OPSET
    dense: bool = False
    last_token_logits: bool = False
    debug_outputs: bool = False
    # Optimum's text-generation-with-past: the prefill also returns every layer's KV cache, and a
    # decode graph (decoder.onnx) continues from it one token at a time.
    with_past: bool = False
    overwrite: bool = False
    trust_remote_code: bool = False
    # Where the PyTorch reference that validates the graph runs (cpu or cuda:N, resolved); the
    # graph itself is traced on the CPU, and the reference computes in the precision of `dtype`.
    device: str = "cpu"
    # One of ATTENTION_FORMS, or None for the engine's own (ENGINE_ATTENTION).
    attention: str | None = None
