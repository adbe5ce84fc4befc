"""The shape contract shared by every implementation of the operator pair.

`K` depends on `T` and the integer sparsity only, never on the data, so TensorRT and
ONNX Runtime can resolve every shape from the input shape alone.
"""

DOMAIN = "ftp"
PLUGIN_NAMESPACE = "ftp"
OP_VERSION = "1"
SPARSITY_DEN = 1000
COMPACT_OP = "TokenCompact"
SCATTER_OP = "TokenScatter"


def kept_count(seq_len: int, sparsity_num: int, sparsity_den: int = SPARSITY_DEN) -> int:
    """Rows TokenCompact keeps out of `seq_len`: `T - (T * num) // den`."""
    if not 0 <= sparsity_num < sparsity_den:
        raise ValueError(f"sparsity_num must be in [0, {sparsity_den}), got {sparsity_num}")
    return seq_len - (seq_len * sparsity_num) // sparsity_den
