"""The Triton kernels against the PyTorch reference, bit for bit, in Triton's CPU interpreter."""

import os

# Must precede the first import of triton: kernels decorated afterwards run on CPU tensors.
os.environ["TRITON_INTERPRET"] = "1"

import subprocess
import sys

import pytest
import torch

try:
    import triton  # noqa: F401
except ImportError:
    pytest.skip("triton not installed: pip install 'ftp-deploy[triton]'", allow_module_level=True)

from ftp_deploy.plugins.token_compaction.geometry import DEFAULT_CONFIG, LaunchConfig
from ftp_deploy.plugins.token_compaction.launch import token_compact_triton, token_scatter_triton
from ftp_deploy.plugins.token_compaction.reference import token_compact, token_scatter

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
# The interpreter runs each program in Python, so a 6000-token row takes minutes with 64 rows per
# program; larger blocks run the same kernel code over the same row in a few seconds.
COARSE = LaunchConfig(rows=1024, select_block=1024, block_d=8)


def same_bits(got: torch.Tensor, want: torch.Tensor) -> bool:
    if got.dtype != want.dtype or got.shape != want.shape:
        return False
    return torch.equal(got.contiguous().view(torch.uint8), want.contiguous().view(torch.uint8))


def random_case(batch: int, seq_len: int, dim: int, dtype: torch.dtype, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(batch, seq_len, dim, generator=gen).to(dtype)
    scores = torch.randn(batch, seq_len, generator=gen)
    return hidden, scores


def check_compact(
    hidden: torch.Tensor, scores: torch.Tensor, num: int, den: int = 1000, config: LaunchConfig = DEFAULT_CONFIG
) -> tuple[torch.Tensor, torch.Tensor]:
    compact, indices = token_compact_triton(hidden, scores, num, den, config=config)
    want_compact, want_indices = token_compact(hidden, scores, num, den)
    assert same_bits(indices, want_indices)
    assert same_bits(compact, want_compact)
    return want_compact, want_indices


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "seq_len", "dim", "num"), [(1, 100, 8, 300), (3, 200, 16, 500), (2, 65, 12, 250)])
def test_compact_random_rows(dtype: torch.dtype, batch: int, seq_len: int, dim: int, num: int) -> None:
    hidden, scores = random_case(batch, seq_len, dim, dtype, seed=seq_len)
    check_compact(hidden, scores, num)


def test_compact_many_programs_default_config() -> None:
    # 600 tokens: 10 programs of 64 rows per row, each finding the threshold over 3 score blocks.
    hidden, scores = random_case(2, 600, 8, torch.bfloat16, seed=1)
    check_compact(hidden, scores, 300)


@pytest.mark.parametrize("dtype", DTYPES)
def test_compact_past_tensorrt_topk_limit(dtype: torch.dtype) -> None:
    hidden, scores = random_case(1, 6000, 8, dtype, seed=6000)
    _, indices = check_compact(hidden, scores, 300, config=COARSE)
    assert indices.shape == (1, 4200)


def test_compact_and_scatter_longest_rows() -> None:
    hidden, scores = random_case(1, 32768, 4, torch.float16, seed=32768)
    scores = scores.round(decimals=1)  # plenty of ties at the threshold too
    config = LaunchConfig(rows=8192, select_block=8192, block_d=4)
    compact, indices = check_compact(hidden, scores, 300, config=config)
    got = token_scatter_triton(hidden, compact + 1, indices, config=config)
    assert same_bits(got, token_scatter(hidden, compact + 1, indices))


@pytest.mark.parametrize("levels", [1, 2, 3, 7])
def test_compact_ties_go_to_lower_positions(levels: int) -> None:
    gen = torch.Generator().manual_seed(levels)
    hidden = torch.randn(2, 300, 8, generator=gen)
    scores = torch.randint(0, levels, (2, 300), generator=gen).float()  # levels == 1: all equal
    check_compact(hidden, scores, 400)


def test_compact_orders_like_torch_sort() -> None:
    # torch.sort ranks every NaN above +inf, all NaNs equal, and -0.0 equal to +0.0.
    specials = [float("nan"), -float("nan"), float("inf"), -float("inf"), 0.0, -0.0, 1e-45, -1e-45, 1.0, -1.0]
    scores = torch.tensor(specials * 13).reshape(1, -1)[
        :, torch.randperm(130, generator=torch.Generator().manual_seed(0))
    ]
    hidden = torch.arange(130 * 4, dtype=torch.float32).reshape(1, 130, 4)
    # Descending, the 13 copies of each value fill ranks: NaNs 1-26, inf, 1.0, 1e-45 53-65,
    # zeros 66-91, ...; these K split the NaN, denormal and zero blocks: 10, 60, 80 (and 2, 117).
    for num in (924, 539, 385, 990, 100):
        check_compact(hidden, scores, num)


@pytest.mark.parametrize(("seq_len", "num", "kept"), [(150, 0, 150), (50, 980, 1), (1, 0, 1), (129, 999, 1)])
def test_compact_keep_all_and_keep_one(seq_len: int, num: int, kept: int) -> None:
    hidden, scores = random_case(2, seq_len, 8, torch.float16, seed=seq_len)
    _, indices = check_compact(hidden, scores, num)
    assert indices.shape == (2, kept)


def test_compact_other_denominator() -> None:
    hidden, scores = random_case(2, 97, 8, torch.float32, seed=97)
    check_compact(hidden, scores, 5, den=7)


def test_compact_empty() -> None:
    compact, indices = token_compact_triton(torch.zeros(2, 0, 8), torch.zeros(2, 0), 300)
    assert compact.shape == (2, 0, 8)
    assert indices.shape == (2, 0)


def test_compact_rejects_bad_inputs() -> None:
    hidden, scores = random_case(1, 10, 4, torch.float32, seed=0)
    with pytest.raises(ValueError, match="float32"):
        token_compact_triton(hidden, scores.half(), 300)
    with pytest.raises(ValueError, match=r"\[B,T\]"):
        token_compact_triton(hidden, scores[:, :5], 300)
    with pytest.raises(ValueError, match="sparsity_num"):
        token_compact_triton(hidden, scores, 1000)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("batch", "seq_len", "num"), [(1, 100, 300), (3, 200, 0), (2, 50, 980)])
def test_scatter_matches_reference(dtype: torch.dtype, batch: int, seq_len: int, num: int) -> None:
    hidden, scores = random_case(batch, seq_len, 16, dtype, seed=seq_len)
    compact, indices = token_compact(hidden, scores, num)
    updated = compact * 2 + 1
    assert same_bits(token_scatter_triton(hidden, updated, indices), token_scatter(hidden, updated, indices))


def test_scatter_past_tensorrt_topk_limit() -> None:
    hidden, scores = random_case(1, 6000, 8, torch.bfloat16, seed=6001)
    compact, indices = token_compact(hidden, scores, 300)
    got = token_scatter_triton(hidden, -compact, indices, config=COARSE)
    assert same_bits(got, token_scatter(hidden, -compact, indices))


def test_scatter_casts_updated_like_reference() -> None:
    hidden, scores = random_case(2, 90, 8, torch.bfloat16, seed=3)
    _, indices = token_compact(hidden, scores, 300)
    updated = torch.randn(2, indices.shape[1], 8, generator=torch.Generator().manual_seed(4))  # fp32
    assert same_bits(token_scatter_triton(hidden, updated, indices), token_scatter(hidden, updated, indices))


def test_scatter_rejects_mismatched_shapes() -> None:
    hidden = torch.zeros(2, 10, 4)
    with pytest.raises(ValueError, match="updated"):
        token_scatter_triton(hidden, torch.zeros(2, 3, 5), torch.zeros(2, 3, dtype=torch.int64))


def test_kernels_need_triton_and_say_how_to_get_it() -> None:
    # A fresh interpreter where `import triton` fails: the package and the wrappers still import.
    code = (
        "import sys; sys.modules['triton'] = None\n"
        "import ftp_deploy.plugins.token_compaction.launch\n"
        "try:\n"
        "    import ftp_deploy.plugins.token_compaction.kernels\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "OptionalDependencyError" in result.stdout
    assert "pip install 'ftp-deploy[triton]'" in result.stdout
