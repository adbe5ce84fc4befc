"""The stitched export: pieces traced once whatever the depth, per-layer parameters, tied weights stored once."""

from __future__ import annotations

import numpy as np
import onnx_ir as ir
import pytest

from ftp_deploy.errors import ExportError
from ftp_deploy.exporters import onnx_export
from ftp_deploy.exporters.graphs import export_module
from ftp_deploy.exporters.onnx_export import stitched_model
from ftp_deploy.exporters.pieces import SENTINEL_SPARSITY_NUM
from ftp_deploy.exporters.spec import ExportSpec
from ftp_deploy.exporters.stitch import LayerRewrite, check_sentinel_confined, sentinel_site
from ftp_deploy.plugins.token_compaction.contract import COMPACT_OP, DOMAIN
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import VOCAB, tiny_model


def _stitched(num_layers: int, kind: str = "static", dense: bool = False, **config: object) -> ir.Model:
    base = tiny_model("llama", num_layers=num_layers, **config)
    sparsities = [0.1 * (i % 5) for i in range(num_layers)]
    routed = RoutedModel(base, Schedule.from_sparsities(sparsities), RouterSpec(kind=kind))
    spec = ExportSpec(thousandths=routed.schedule.thousandths, dense=dense, last_token_logits=True)
    export_module(routed, spec)
    return stitched_model(routed, spec, VOCAB)


def _compact_numerators(model: ir.Model) -> list[int]:
    return [
        node.attributes["sparsity_num"].as_int()
        for node in model.graph
        if node.domain == DOMAIN and node.op_type == COMPACT_OP
    ]


def test_pieces_are_traced_once_whatever_the_depth(monkeypatch: pytest.MonkeyPatch) -> None:
    traced: list[str] = []
    original = onnx_export._PieceTracer.trace

    def counting(self, module, example, output_names):  # type: ignore[no-untyped-def]
        traced.append(type(module).__name__)
        return original(self, module, example, output_names)

    monkeypatch.setattr(onnx_export._PieceTracer, "trace", counting)
    shallow, deep = _stitched(2), _stitched(6)
    assert traced == ["Prologue", "RoutedBlock", "Epilogue"] * 2
    # Every layer has its own copy of the block, with its own kept-count numerator.
    assert _compact_numerators(shallow) == [0, 100]
    assert _compact_numerators(deep) == [0, 100, 200, 300, 400, 0]
    block_nodes = (len(deep.graph) - len(shallow.graph)) / 4
    assert len(deep.graph) == len(shallow.graph) + 4 * block_nodes and block_nodes == int(block_nodes)
    # An untied LM head keeps its own weight.
    assert {"model.embed_tokens.weight", "lm_head.weight"} <= set(deep.graph.initializers)


def test_sentinel_appears_in_no_stitched_layer() -> None:
    model = _stitched(3, kind="learned")
    for node in model.graph:
        for attribute in node.attributes.values():
            if attribute.type == ir.AttributeType.TENSOR and attribute.value.size == 1:
                assert int(attribute.as_tensor().numpy().reshape(())) != SENTINEL_SPARSITY_NUM
    # The symbolic kept-count axes name each layer's own numerator.
    dims = {str(dim) for node in model.graph for out in node.outputs if out.shape for dim in out.shape}
    assert not any(f"{SENTINEL_SPARSITY_NUM}*" in dim for dim in dims)


def test_tied_embedding_is_stored_once() -> None:
    names = set(_stitched(2, dense=True, tie_word_embeddings=True).graph.initializers)
    assert "model.embed_tokens.weight" in names and "lm_head.weight" not in names
    # Layer weights are named as PyTorch names them, once per layer.
    assert {"model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.q_proj.weight"} <= names


def _constant(value: int | list[int], name: str = "c") -> ir.Node:
    return ir.node("Constant", [], {"value": ir.tensor(np.array(value, dtype=np.int64))}, name=name)


def test_layer_rewrite_replaces_the_sentinel_constant_and_attribute() -> None:
    rewrite = LayerRewrite(sentinel=SENTINEL_SPARSITY_NUM, sparsity_num=250)
    constant = _constant(SENTINEL_SPARSITY_NUM)
    compact = ir.node(COMPACT_OP, [], {"sparsity_num": SENTINEL_SPARSITY_NUM}, domain=DOMAIN, num_outputs=2)
    unrelated = _constant(7)
    assert [rewrite.apply(node) for node in (constant, compact, unrelated)] == [1, 1, 0]
    assert int(constant.attributes["value"].as_tensor().numpy()) == 250
    assert compact.attributes["sparsity_num"].as_int() == 250
    assert sentinel_site(unrelated, SENTINEL_SPARSITY_NUM) is None
    assert rewrite.dim_name(f"sequence - ((({SENTINEL_SPARSITY_NUM}*sequence)//1000))") == (
        "sequence - (((250*sequence)//1000))"
    )


@pytest.mark.parametrize(
    "node",
    [
        ir.node("Reshape", [], {"allowzero": SENTINEL_SPARSITY_NUM}),
        ir.node("Slice", [], {"axes": [1, SENTINEL_SPARSITY_NUM]}),
        _constant([SENTINEL_SPARSITY_NUM, 1]),
    ],
    ids=["int attribute", "ints attribute", "two-element constant"],
)
def test_a_sentinel_the_stitcher_cannot_replace_is_refused(node: ir.Node) -> None:
    graph = ir.Graph([], [], nodes=[node], opset_imports={"": 18})
    with pytest.raises(ExportError, match="carries its sparsity"):
        check_sentinel_confined(ir.Model(graph, ir_version=10), SENTINEL_SPARSITY_NUM)
