"""ONNX Runtime's fused RMS normalizations in the in-place decode graph, by onnxscript's ort_fusions.

A decode step computes one token per row, so it costs its weights' bytes plus a fixed cost per node;
the RMSNorm that transformers writes (Pow, ReduceMean, Add, Sqrt, Reciprocal, Mul, Mul) and the
residual Add before it become one com.microsoft SkipSimplifiedLayerNormalization, as in
onnxruntime-genai's graphs (measured on SmolLM2 at 1024 tokens: about 1 ms of a 28 ms step).
Only the in-place decode graph gets them: it already holds ONNX Runtime's GroupQueryAttention,
while the concat form stays in standard ops for TensorRT. The prefill gains nothing measurable (a
1024-token prefill took the same time fused), so it keeps the graph its validation compares.
"""

from __future__ import annotations

import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter.ort_fusions.rms_normalization import fuse_rms_normalization
from onnxscript.rewriter.ort_fusions.skip_normalization import fuse_skip_rms_normalization


def fuse_normalizations(model: ir.Model) -> dict[str, int]:
    """Fuse `model`'s RMSNorms in place (with their residual Add where one precedes); the fusions' counts.

    The one norm with no residual before it becomes SimplifiedLayerNormalization, which ONNX Runtime
    registers in the ONNX domain though ONNX does not define it: onnx.checker sees the graph before this.
    """
    common_passes.ShapeInferencePass()(model)  # the fusion rules read the inputs' ranks and types
    counts = {"rms_normalization": fuse_rms_normalization(model)}
    counts["skip_rms_normalization"] = fuse_skip_rms_normalization(model)
    # The replaced chains' constants (epsilon, the exponent) would stay behind as unused initializers,
    # which ONNX Runtime warns about at every session load.
    common_passes.RemoveUnusedNodesPass()(model)
    return counts
