"""The ONNX function bodies of TokenCompact / TokenScatter against the PyTorch reference, in ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from ftp_deploy.plugins.token_compaction.contract import COMPACT_OP, DOMAIN, SCATTER_OP, kept_count
from ftp_deploy.plugins.token_compaction.onnx_functions import DOMAIN_OPSET, local_functions
from ftp_deploy.plugins.token_compaction.reference import token_compact, token_scatter
from tests.conftest import EXPORT_IR_VERSION

PLUGIN = {"plugin_namespace": "ftp", "plugin_version": "1"}
ONNX_TYPES = {torch.float32: TensorProto.FLOAT, torch.float16: TensorProto.FLOAT16}


def pair_model(sparsity_num: int, dtype: torch.dtype = torch.float32, opset: int = 18) -> onnx.ModelProto:
    """TokenCompact, then TokenScatter of the compacted rows (doubled) back: both ops, both outputs."""
    nodes = [
        helper.make_node(
            COMPACT_OP, ["hidden", "scores"], ["compact", "indices"], domain=DOMAIN,
            sparsity_num=sparsity_num, sparsity_den=1000, **PLUGIN,
        ),
        helper.make_node("Add", ["compact", "compact"], ["updated"]),
        helper.make_node(SCATTER_OP, ["hidden", "updated", "indices"], ["out"], domain=DOMAIN, **PLUGIN),
    ]  # fmt: skip
    elem = ONNX_TYPES[dtype]
    graph = helper.make_graph(
        nodes,
        "pair",
        [
            helper.make_tensor_value_info("hidden", elem, ["B", "T", "D"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["B", "T"]),
        ],
        [
            helper.make_tensor_value_info("compact", elem, ["B", "K", "D"]),
            helper.make_tensor_value_info("indices", TensorProto.INT64, ["B", "K"]),
            helper.make_tensor_value_info("out", elem, ["B", "T", "D"]),
        ],
    )
    opsets = [helper.make_opsetid("", opset), helper.make_opsetid(DOMAIN, DOMAIN_OPSET)]
    functions = local_functions(opset)
    return helper.make_model(graph, opset_imports=opsets, functions=functions, ir_version=EXPORT_IR_VERSION)


def run_pair(model: onnx.ModelProto, hidden: torch.Tensor, scores: torch.Tensor) -> list[np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"hidden": hidden.numpy(), "scores": scores.numpy()})


def reference_pair(hidden: torch.Tensor, scores: torch.Tensor, num: int) -> list[np.ndarray]:
    compact, indices = token_compact(hidden, scores, num)
    return [t.numpy() for t in (compact, indices, token_scatter(hidden, compact + compact, indices))]


@pytest.mark.parametrize("opset", [18, 23])
def test_functions_pass_the_full_checker(opset: int) -> None:
    onnx.checker.check_model(pair_model(300, opset=opset), full_check=True)


@pytest.mark.parametrize(
    ("batch", "seq_len", "num"),
    [
        (3, 1, 300),  # T = 1: K = 1
        (2, 7, 999),  # K = 1
        (2, 9, 0),  # K = T
        (4, 64, 300),
        (2, 333, 500),
        (1, 2048, 250),
    ],
)
@pytest.mark.parametrize("ties", [False, True])
def test_function_bodies_match_the_reference(batch: int, seq_len: int, num: int, ties: bool) -> None:
    generator = torch.Generator().manual_seed(seq_len + num)
    hidden = torch.randn(batch, seq_len, 5, generator=generator)
    if ties:  # a handful of distinct values: most scores tie with others in their row
        scores = torch.randint(0, 4, (batch, seq_len), generator=generator).float()
    else:
        scores = torch.randn(batch, seq_len, generator=generator)
    got = run_pair(pair_model(num), hidden, scores)
    assert got[1].shape == (batch, kept_count(seq_len, num))
    for ours, reference in zip(got, reference_pair(hidden, scores, num), strict=True):
        np.testing.assert_array_equal(ours, reference)


def test_forced_and_padding_scores_tie_as_in_routing() -> None:
    """Routing's scores: two forced tokens at 1e6, padding at -1e6, so K beyond the valid tokens ties."""
    scores = torch.tensor([[-1e6, -1e6, 1e6, 3.0, 1.0, 1e6], [1e6, 2.0, 2.0, 2.0, 1e6, -1e6]])
    hidden = torch.randn(2, 6, 3)
    for num in (0, 200, 500, 800):
        got, want = run_pair(pair_model(num), hidden, scores), reference_pair(hidden, scores, num)
        for ours, reference in zip(got, want, strict=True):
            np.testing.assert_array_equal(ours, reference)


def test_fp16_hidden_states_move_bit_for_bit() -> None:
    generator = torch.Generator().manual_seed(1)
    hidden = torch.randn(2, 40, 6, generator=generator).half()
    scores = torch.randn(2, 40, generator=generator)
    for ours, reference in zip(
        run_pair(pair_model(300, torch.float16), hidden, scores), reference_pair(hidden, scores, 300), strict=True
    ):
        np.testing.assert_array_equal(ours, reference)
