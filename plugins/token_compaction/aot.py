"""PTX of the kernels for the TensorRT plugin's aot_impl (needs triton; no TensorRT).

Given a target and a PTX version, compiling needs no GPU: the tests here compile both kernels
for sm_90 and assemble the PTX with the CUDA toolkit's ptxas when one is installed.
"""

import ctypes
import functools
import re
from dataclasses import dataclass
from typing import Any, Literal

from ftp_deploy.placement import DTYPE_NAMES
from ftp_deploy.plugins.token_compaction.geometry import DEFAULT_CONFIG

Op = Literal["compact", "scatter"]

# The hidden-state element types the plugins support: our dtype names, which are Triton's too.
HIDDEN_TYPES = DTYPE_NAMES


@dataclass(frozen=True)
class CompiledKernel:
    """What TensorRT needs to launch one compiled kernel."""

    name: str
    ptx: str
    threads: int  # per program (CUDA block)
    shared_bytes: int


def kernel_signature(op: Op, hidden_type: str) -> dict[str, str]:
    """Triton signature of the op's kernel: input pointers, int32 scalars, output pointers.

    That order is the AOT plugin calling convention: TensorRT passes the inputs, then the extra
    int32 arguments, then the outputs.
    """
    if hidden_type not in HIDDEN_TYPES:
        raise ValueError(f"hidden type must be one of {HIDDEN_TYPES}, got {hidden_type!r}")
    hidden = f"*{hidden_type}"
    scalars = {"seq_len": "i32", "kept": "i32", "dim": "i32"}
    if op == "compact":
        return {"hidden_ptr": hidden, "scores_ptr": "*fp32", **scalars, "compact_ptr": hidden, "indices_ptr": "*i64"}
    return {"hidden_ptr": hidden, "updated_ptr": hidden, "indices_ptr": "*i64", **scalars, "out_ptr": hidden}


@functools.cache
def compile_kernel(
    op: Op, hidden_type: str, aligned: bool, target: Any = None, ptx_version: int | None = None
) -> CompiledKernel:
    """The op's kernel compiled to PTX with the default launch configuration.

    `aligned`: every pointer is 16-byte aligned and D is a multiple of 16, which lets Triton use
    16-byte loads and stores; otherwise nothing is assumed. `target`: a
    `triton.backends.compiler.GPUTarget`, None for the current GPU's. `ptx_version` (e.g. 90 for
    PTX ISA 9.0): None for Triton's default, lowered to what the installed driver can load,
    since TensorRT hands the PTX to the driver's JIT compiler. With an explicit target and PTX
    version it needs no GPU; the defaults need a GPU and its driver.
    """
    from ftp_deploy.plugins.token_compaction import kernels

    fn = kernels.token_compact_kernel if op == "compact" else kernels.token_scatter_kernel
    constexprs = DEFAULT_CONFIG.compact_constexprs() if op == "compact" else DEFAULT_CONFIG.scatter_constexprs()
    signature = kernel_signature(op, hidden_type)
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, (name, kind) in enumerate(signature.items())
        if aligned and (kind.startswith("*") or name == "dim")
    }
    compiled = _compile(fn, signature, constexprs, attrs, target, ptx_version)
    if ptx_version is None and declared_ptx_version(compiled.asm["ptx"]) > (limit := driver_ptx_version()):
        compiled = _compile(fn, signature, constexprs, attrs, target, limit)
    meta = compiled.metadata
    # Triton appends scratch-buffer pointers to every kernel's parameters; TensorRT passes only
    # inputs, extra scalars and outputs, so those pointers stay unset and must go unused.
    # (profile_scratch_size is newer than some supported Triton versions, hence getattr.)
    if meta.global_scratch_size or getattr(meta, "profile_scratch_size", 0):
        raise RuntimeError(f"{meta.name} needs a Triton scratch buffer, which TensorRT cannot supply")
    return CompiledKernel(meta.name, compiled.asm["ptx"], meta.num_warps * 32, meta.shared)


def declared_ptx_version(ptx: str) -> int:
    """The `.version X.Y` of a PTX text as Triton numbers it (X * 10 + Y)."""
    found = re.search(r"^\.version (\d+)\.(\d+)$", ptx, flags=re.MULTILINE)
    if found is None:
        raise ValueError("no .version directive in the PTX")
    return int(found[1]) * 10 + int(found[2])


def driver_ptx_version() -> int:
    """The newest PTX ISA version the installed CUDA driver accepts.

    Needs a CUDA driver (libcuda.so.1).
    """
    from triton.backends.nvidia.compiler import ptx_get_version

    version = ctypes.c_int()
    if ctypes.CDLL("libcuda.so.1").cuDriverGetVersion(ctypes.byref(version)) != 0:
        raise RuntimeError("cuDriverGetVersion failed")
    major, minor = divmod(version.value // 10, 100)
    return int(ptx_get_version(f"{major}.{minor}"))


def _compile(
    fn: Any,
    signature: dict[str, str],
    constexprs: dict[str, int],
    attrs: dict[tuple[int], list[list[Any]]],
    target: Any,
    ptx_version: int | None,
) -> Any:
    import triton
    from triton.compiler import ASTSource

    options: dict[str, int] = {"num_warps": DEFAULT_CONFIG.num_warps}
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    return triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options)
