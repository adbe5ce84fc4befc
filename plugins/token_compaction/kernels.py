"""Triton kernels of TokenCompact and TokenScatter, one kernel per operator.

One kernel each, because a TensorRT AOT plugin bakes exactly one kernel launch into the engine
(aot.py compiles these same functions to PTX; launch.py runs them from PyTorch).

Grid of both kernels: (ceil(T / ROWS), B), block sizes from geometry.LaunchConfig. Program (c, b)
owns positions [c*ROWS, (c+1)*ROWS) of row b, so every output element is written by exactly one
program and no launch order or atomics are involved.

Importing this module needs triton; nothing imports it until a kernel is wanted. The kernels call
no @jit helper of triton.language (tl.sum, tl.cumsum, tl.zeros, ...), only its builtins: those
helpers take interpreter mode from when triton was first imported, these kernels from when this
module is, so TRITON_INTERPRET=1 set before importing this module suffices to run them on CPU
tensors, even where something imported triton earlier (transformers' LLaMA code does).
"""

from ftp_deploy.errors import missing_dependency

try:
    import triton
    import triton.language as tl
except ImportError as exc:
    raise missing_dependency("triton", "triton") from exc


# Triton's own addition combiner for tl.reduce / tl.associative_scan: the interpreter recognises it
# by identity and sums with numpy (never calling it); any other combiner it runs element by element
# in Python, tens of times slower.
_ADD = tl.standard._sum_combine


@triton.jit
def _order_key(scores):
    """uint32 keys whose unsigned order is the order torch.sort gives the fp32 scores."""
    bits = scores.to(tl.int32, bitcast=True)
    magnitude = bits & 0x7FFFFFFF
    # torch.sort holds -0.0 == +0.0, and every NaN equal to every other and above +inf. Tested on
    # the bits, as a float comparison may flush denormals to zero on a GPU.
    bits = tl.where(magnitude == 0, 0, bits)
    bits = tl.where(magnitude > 0x7F800000, 0x7FFFFFFF, bits)
    # Negative floats order backwards by their bits: flip them all; non-negative: set the sign bit.
    flip = (bits >> 31) | -2147483648
    return (bits ^ flip).to(tl.uint32, bitcast=True)


@triton.jit
def _kth_largest_key(scores_row, seq_len, kept, SELECT_BLOCK: tl.constexpr, RADIX_BITS: tl.constexpr):
    """The kept-th largest key of a row: a radix select, RADIX_BITS bits per pass from the top.

    After each pass `prefix` is the largest value of the settled bits (lower bits zero) such that
    at least `kept` keys are >= it, which after the last pass is the kept-th largest key itself.
    """
    digits = tl.arange(0, 1 << RADIX_BITS).to(tl.uint32)
    prefix = tl.full([1], 0, tl.uint32)
    for p in tl.static_range(32 // RADIX_BITS):
        shift = 32 - RADIX_BITS * (p + 1)
        candidates = prefix | (digits << shift)
        at_least = tl.full([1 << RADIX_BITS], 0, tl.int32)
        for start in range(0, seq_len, SELECT_BLOCK):
            offs = start + tl.arange(0, SELECT_BLOCK)
            valid = offs < seq_len
            keys = _order_key(tl.load(scores_row + offs, mask=valid, other=0.0))
            hits = (keys[:, None] >= candidates[None, :]) & valid[:, None]
            at_least += tl.reduce(hits.to(tl.int32), 0, _ADD)
        # at_least falls as the digit grows and digit 0 always reaches `kept`, so the digit
        # of the kept-th largest key is the count of the other digits that still reach it.
        digit = tl.reduce((at_least >= kept).to(tl.int32), 0, _ADD) - 1
        prefix = prefix | (digit.to(tl.uint32) << shift)
    return prefix


@triton.jit
def _copy_rows(src_ptr, src_rows, dst_ptr, dst_rows, row_mask, dim, BLOCK_D: tl.constexpr):
    """dst[dst_rows[i], :] = src[src_rows[i], :] where row_mask[i]: rows of `dim` values, one dtype."""
    cols = tl.arange(0, BLOCK_D)
    for col0 in range(0, dim, BLOCK_D):
        col = col0 + cols
        mask = row_mask[:, None] & (col < dim)[None, :]
        values = tl.load(src_ptr + src_rows[:, None] * dim + col[None, :], mask=mask)
        tl.store(dst_ptr + dst_rows[:, None] * dim + col[None, :], values, mask=mask)


# seq_len and kept only bound loops and offsets; specializing on their divisibility by 16 would
# compile up to four variants per dtype for no gain. dim stays specialized: it enables 16-byte copies.
@triton.jit(do_not_specialize=["seq_len", "kept"])
def token_compact_kernel(
    hidden_ptr,
    scores_ptr,
    seq_len,
    kept,
    dim,
    compact_ptr,
    indices_ptr,
    ROWS: tl.constexpr,
    SELECT_BLOCK: tl.constexpr,
    BLOCK_D: tl.constexpr,
    RADIX_BITS: tl.constexpr,
):
    """TokenCompact for positions [c*ROWS, (c+1)*ROWS) of row b, program (c, b).

    Parameter order is TensorRT's AOT convention: input pointers, int32 scalars, output pointers.
    Every program finds the row's threshold itself (re-reading the row's scores, 4 bytes a token,
    from cache), so the kernel needs no second launch and no workspace.
    """
    chunk = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    scores_row = scores_ptr + batch * seq_len
    threshold = _kth_largest_key(scores_row, seq_len, kept, SELECT_BLOCK, RADIX_BITS)

    # Keys above the threshold are all kept; of the keys equal to it, the first
    # (kept - above_total) in position order are. Count both before this program's positions.
    first = chunk * ROWS
    above_total = 0
    above_before = 0
    tied_before = 0
    for start in range(0, seq_len, SELECT_BLOCK):
        offs = start + tl.arange(0, SELECT_BLOCK)
        valid = offs < seq_len
        keys = _order_key(tl.load(scores_row + offs, mask=valid, other=0.0))
        above = (keys > threshold) & valid
        before = offs < first
        above_total += tl.reduce(above.to(tl.int32), 0, _ADD)
        above_before += tl.reduce((above & before).to(tl.int32), 0, _ADD)
        tied_before += tl.reduce(((keys == threshold) & valid & before).to(tl.int32), 0, _ADD)
    tied_kept = kept - above_total

    pos = first + tl.arange(0, ROWS)
    valid = pos < seq_len
    keys = _order_key(tl.load(scores_row + pos, mask=valid, other=0.0))
    tied = ((keys == threshold) & valid).to(tl.int32)
    tied_rank = tied_before + tl.associative_scan(tied, 0, _ADD) - tied
    keep = ((keys > threshold) & valid) | ((tied != 0) & (tied_rank < tied_kept))
    keep_i = keep.to(tl.int32)
    dest = above_before + tl.minimum(tied_before, tied_kept) + tl.associative_scan(keep_i, 0, _ADD) - keep_i
    out_rows = batch * kept + dest
    tl.store(indices_ptr + out_rows, pos.to(tl.int64), mask=keep)
    _copy_rows(hidden_ptr, batch * seq_len + pos, compact_ptr, out_rows, keep, dim, BLOCK_D)


@triton.jit
def _last_at_most(sorted_row, length, targets):
    """Per target, the last slot of an ascending row whose value is <= target (slot 0 if none).

    A branch-free binary search: the span halves for every lane at once, so the loop count
    depends on `length` alone and every probe stays inside the row.
    """
    base = tl.full(targets.shape, 0, tl.int32)
    span = length
    while span > 1:
        half = span // 2
        probe = tl.load(sorted_row + base + half)
        base = tl.where(probe <= targets, base + half, base)
        span -= half
    return base


@triton.jit(do_not_specialize=["seq_len", "kept"])
def token_scatter_kernel(
    hidden_ptr,
    updated_ptr,
    indices_ptr,
    seq_len,
    kept,
    dim,
    out_ptr,
    ROWS: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    """TokenScatter for positions [c*ROWS, (c+1)*ROWS) of row b, program (c, b).

    Each output row is pulled from `updated` if its position is among the row's indices, else
    from `hidden`. Finding it binary-searches the indices, so they must be strictly ascending
    per row, as TokenCompact emits them.
    """
    chunk = tl.program_id(0)
    batch = tl.program_id(1).to(tl.int64)
    pos = chunk * ROWS + tl.arange(0, ROWS)
    valid = pos < seq_len
    indices_row = indices_ptr + batch * kept
    slot = _last_at_most(indices_row, kept, pos)
    found = tl.load(indices_row + slot, mask=valid & (slot < kept), other=-1) == pos
    rows = batch * seq_len + pos
    _copy_rows(updated_ptr, batch * kept + slot, out_ptr, rows, valid & found, dim, BLOCK_D)
    _copy_rows(hidden_ptr, rows, out_ptr, rows, valid & ~found, dim, BLOCK_D)
