"""Output shapes and launch geometry of the kernels, shared by PyTorch launches and TensorRT.

The formulas are written once for Python ints and `tensorrt.plugin.ShapeExpr` alike. ShapeExpr
implements `+ - * //` with the int on the right only (no reflected operators), so each formula
keeps the dimension on the left of every operator; tests run them on ints and on a stand-in
type without reflected operators.
"""

from dataclasses import dataclass
from typing import Protocol, TypeVar

from ftp_deploy.plugins.token_compaction.contract import kept_count

DimT = TypeVar("DimT", bound="Dim")


class Dim(Protocol):
    """What the formulas need from a dimension: an int or a `tensorrt.plugin.ShapeExpr`."""

    def __add__(self: DimT, other: int, /) -> DimT: ...

    def __sub__(self: DimT, other: DimT, /) -> DimT: ...

    def __mul__(self: DimT, other: int, /) -> DimT: ...

    def __floordiv__(self: DimT, other: int, /) -> DimT: ...


def kept_count_expr(seq_len: DimT, sparsity_num: int, sparsity_den: int) -> DimT:
    """K = T - (T * num) // den, the formula of `contract.kept_count`, for an int or symbolic T."""
    # The range check is the contract's own; with T = 0 it checks the sparsity and nothing else.
    kept_count(0, sparsity_num, sparsity_den)
    return seq_len - (seq_len * sparsity_num) // sparsity_den


def programs_per_row(seq_len: DimT, rows: int) -> DimT:
    """ceil(T / rows): the x extent of both kernels' grids."""
    return (seq_len + (rows - 1)) // rows


@dataclass(frozen=True)
class LaunchConfig:
    """Block sizes of both kernels (their constexprs) and the warps per program."""

    rows: int = 64  # positions per program: the grid is (ceil(T / rows), B)
    select_block: int = 256  # scores read per step of the threshold search
    block_d: int = 128  # hidden columns copied per step
    radix_bits: int = 4  # key bits settled per pass of the threshold search: 32 / radix_bits passes
    num_warps: int = 8

    def __post_init__(self) -> None:
        # tl.arange and Triton's warp counts need powers of two; the radix passes must tile 32 key bits.
        for name in ("rows", "select_block", "block_d", "num_warps"):
            value = getattr(self, name)
            if value < 1 or value & (value - 1):
                raise ValueError(f"LaunchConfig.{name} must be a power of two, got {value}")
        if self.radix_bits < 1 or 32 % self.radix_bits:
            raise ValueError(f"LaunchConfig.radix_bits must divide 32, got {self.radix_bits}")

    def compact_constexprs(self) -> dict[str, int]:
        return {
            "ROWS": self.rows,
            "SELECT_BLOCK": self.select_block,
            "BLOCK_D": self.block_d,
            "RADIX_BITS": self.radix_bits,
        }

    def scatter_constexprs(self) -> dict[str, int]:
        return {"ROWS": self.rows, "BLOCK_D": self.block_d}


# 64 rows give T = 8192 about one program per multiprocessor of a large GPU, and every program
# repeats the threshold search, so more rows per program would leave multiprocessors idle.
# 8 warps keep a 64 x 128 copy tile in registers without spills (ptxas, sm_90) even when D is not
# known to be a multiple of 16. Not yet timed on a GPU: benchmarks/gpu_kernels.py compares configs.
DEFAULT_CONFIG = LaunchConfig()
