"""TensorRT plugins `ftp::TokenCompact` and `ftp::TokenScatter` (`tensorrt.plugin`, TensorRT >= 10.6).

Nothing registers on import: call `register_trt_plugins()` before parsing an ONNX model or
building a network that uses the ops, and before deserializing an engine built with the JIT
implementation (engines built with the AOT implementation hold their kernels and need no Python).

Each op has both implementations, so TensorRT must be told which one to use: the ONNX node's
bool attribute `aot` (the parser then asks for it strictly), or the network flag
`PREFER_AOT_PYTHON_PLUGINS` / `PREFER_JIT_PYTHON_PLUGINS`, or `network.add_plugin(..., aot=...)`.
The plugin's attributes are exactly `sparsity_num` and `sparsity_den` (both ints, no defaults).

Written against the documented `tensorrt.plugin` API and the NVIDIA sample
samples/python/quickly_deployable_plugins; the functions below need TensorRT. The shape formulas
(geometry.py) and the PTX compilation (aot.py) they rely on need no TensorRT.
"""

import functools
from types import SimpleNamespace
from typing import Any

from ftp_deploy.errors import missing_dependency
from ftp_deploy.plugins.token_compaction.contract import COMPACT_OP, PLUGIN_NAMESPACE, SCATTER_OP
from ftp_deploy.plugins.token_compaction.geometry import DEFAULT_CONFIG, kept_count_expr, programs_per_row

COMPACT_ID = f"{PLUGIN_NAMESPACE}::{COMPACT_OP}"
SCATTER_ID = f"{PLUGIN_NAMESPACE}::{SCATTER_OP}"

# Type combinations for autotune, I/O in order; "|" pairs the hidden-state types up.
_HIDDEN = "FP32|FP16|BF16"
COMPACT_TYPES = f"{_HIDDEN}, FP32, {_HIDDEN}, INT64"  # hidden, scores -> compact, indices
SCATTER_TYPES = f"{_HIDDEN}, {_HIDDEN}, INT64, {_HIDDEN}"  # hidden, updated, indices -> out


@functools.cache
def register_trt_plugins() -> None:
    """Register both plugins with TensorRT's plugin registry; later calls do nothing.

    Needs TensorRT >= 10.6 (the AOT implementations >= 10.9) and, to build, a GPU.
    """
    try:
        import tensorrt as trt
        import tensorrt.plugin as trtp
    except ImportError as exc:
        raise missing_dependency("tensorrt", "trt") from exc
    import torch

    # tensorrt.plugin reads these functions' annotations as runtime objects, so the functions
    # are defined here, where the lazily imported module is in scope.
    triton_types = {trt.float32: "fp32", trt.float16: "fp16", trt.bfloat16: "bf16"}
    # __cuda_array_interface__ has no bf16, so bf16 memory is viewed as int16 and reinterpreted.
    torch_views = {
        trt.float32: ("<f4", torch.float32),
        trt.float16: ("<f2", torch.float16),
        trt.bfloat16: ("<i2", torch.bfloat16),
        trt.int64: ("<i8", torch.int64),
    }

    def as_torch(*tensors: trtp.Tensor) -> list[torch.Tensor]:
        """Torch views of the plugin's tensors."""
        return [_torch_view(t, *torch_views[t.dtype]) for t in tensors]

    @trtp.register(COMPACT_ID)
    def compact_desc(
        hidden: trtp.TensorDesc, scores: trtp.TensorDesc, sparsity_num: int, sparsity_den: int
    ) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
        """Outputs [B, K, D] like hidden and [B, K] int64, K from T and the attributes."""
        batch, seq_len, dim = hidden.shape_expr
        kept = kept_count_expr(seq_len, sparsity_num, sparsity_den)
        return (
            trtp.from_shape_expr((batch, kept, dim), dtype=hidden.dtype),
            trtp.from_shape_expr((batch, kept), dtype=trt.int64),
        )

    @trtp.autotune(COMPACT_ID)
    def compact_autotune(
        hidden: trtp.TensorDesc, scores: trtp.TensorDesc, outputs: tuple[trtp.TensorDesc, trtp.TensorDesc]
    ) -> list[trtp.AutoTuneCombination]:
        """fp32/fp16/bf16 hidden states, fp32 scores, linear layout."""
        return [trtp.AutoTuneCombination(COMPACT_TYPES, "LINEAR")]

    @trtp.impl(COMPACT_ID)
    def compact_jit(
        hidden: trtp.Tensor,
        scores: trtp.Tensor,
        sparsity_num: int,
        sparsity_den: int,
        outputs: tuple[trtp.Tensor, trtp.Tensor],
        stream: int,
    ) -> None:
        """JIT fallback through the PyTorch launch of the same kernel."""
        from ftp_deploy.plugins.token_compaction.launch import token_compact_into

        # K is fixed by the output shape TensorRT allocated from compact_desc.
        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            token_compact_into(*as_torch(hidden, scores, *outputs))

    @trtp.register(SCATTER_ID)
    def scatter_desc(hidden: trtp.TensorDesc, updated: trtp.TensorDesc, indices: trtp.TensorDesc) -> trtp.TensorDesc:
        """Output like hidden."""
        return hidden.like()

    @trtp.autotune(SCATTER_ID)
    def scatter_autotune(
        hidden: trtp.TensorDesc,
        updated: trtp.TensorDesc,
        indices: trtp.TensorDesc,
        outputs: tuple[trtp.TensorDesc],
    ) -> list[trtp.AutoTuneCombination]:
        """fp32/fp16/bf16 hidden and updated states of one type, int64 indices."""
        return [trtp.AutoTuneCombination(SCATTER_TYPES, "LINEAR")]

    @trtp.impl(SCATTER_ID)
    def scatter_jit(
        hidden: trtp.Tensor,
        updated: trtp.Tensor,
        indices: trtp.Tensor,
        outputs: tuple[trtp.Tensor],
        stream: int,
    ) -> None:
        """JIT fallback through the PyTorch launch of the same kernel."""
        from ftp_deploy.plugins.token_compaction.launch import token_scatter_into

        with torch.cuda.stream(torch.cuda.ExternalStream(stream)):
            token_scatter_into(*as_torch(hidden, updated, indices, *outputs))

    if not hasattr(trtp, "aot_impl"):
        return  # TensorRT < 10.9: JIT implementations only

    @trtp.aot_impl(COMPACT_ID)
    def compact_aot(
        hidden: trtp.TensorDesc,
        scores: trtp.TensorDesc,
        sparsity_num: int,
        sparsity_den: int,
        outputs: tuple[trtp.TensorDesc, trtp.TensorDesc],
        tactic: int,  # TensorRT always passes one; there is a single tactic
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        """The kernel baked into the engine (needs TensorRT; aot.compile_kernel does not)."""
        batch, seq_len, dim = hidden.shape_expr
        kept = outputs[1].shape_expr[1]
        return _aot_launch(trtp, "compact", triton_types[hidden.dtype], batch, seq_len, kept, dim)

    @trtp.aot_impl(SCATTER_ID)
    def scatter_aot(
        hidden: trtp.TensorDesc,
        updated: trtp.TensorDesc,
        indices: trtp.TensorDesc,
        outputs: tuple[trtp.TensorDesc],
        tactic: int,
    ) -> tuple[str | bytes, str | bytes, trtp.KernelLaunchParams, trtp.SymIntExprs]:
        """The kernel baked into the engine (needs TensorRT; aot.compile_kernel does not)."""
        batch, seq_len, dim = hidden.shape_expr
        kept = indices.shape_expr[1]
        return _aot_launch(trtp, "scatter", triton_types[hidden.dtype], batch, seq_len, kept, dim)


def _torch_view(tensor: Any, typestr: str, dtype: Any) -> Any:
    """A zero-copy torch view of a `tensorrt.plugin.Tensor`, read as `typestr`, viewed as `dtype`.

    Needs TensorRT and a GPU.
    """
    import torch

    itemsize = int(typestr[2:])
    memory = SimpleNamespace(
        __cuda_array_interface__={
            "shape": tuple(tensor.shape),
            "typestr": typestr,
            "data": (tensor.data_ptr, False),
            "strides": tuple(s * itemsize for s in tensor.strides),
            "version": 3,
        }
    )
    return torch.as_tensor(memory, device="cuda").view(dtype)


def _aot_launch(
    trtp: Any, op: Any, hidden_type: str, batch: Any, seq_len: Any, kept: Any, dim: Any
) -> tuple[str, str, Any, Any]:
    """The AOT answer for one op: kernel name, PTX, grid (ceil(T / rows), B), extra args (T, K, D).

    Uses 16-byte accesses only when D is a build-time constant multiple of 16; tensor addresses
    are then assumed 16-byte aligned (TensorRT requires 256 for network I/O; that its internal
    tensors are aligned likewise is assumed, not checked). Needs TensorRT.
    """
    from ftp_deploy.plugins.token_compaction.aot import compile_kernel

    aligned = bool(dim.is_constant and dim.constant_value % 16 == 0)
    kernel = compile_kernel(op, hidden_type, aligned)
    launch = trtp.KernelLaunchParams()
    launch.grid_x = programs_per_row(seq_len, DEFAULT_CONFIG.rows)
    launch.grid_y = batch
    launch.block_x = kernel.threads
    launch.shared_mem = kernel.shared_bytes
    extra_args = trtp.SymIntExprs.from_tuple([trtp.SymInt32(e) for e in (seq_len, kept, dim)])
    return kernel.name, kernel.ptx, launch, extra_args
