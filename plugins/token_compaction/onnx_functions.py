"""Model-local ONNX functions for `ftp::TokenCompact` and `ftp::TokenScatter`.

Their bodies use standard ONNX ops only, so ONNX Runtime runs an exported file with no custom
library, while TensorRT swaps in the plugin named by the node's `plugin_namespace`. The bodies
follow reference.py exactly: ONNX TopK puts equal values in index order (the reference's tie
rule), a second TopK sorts the kept positions ascending, GatherND / ScatterND move whole rows.
"""

from onnx import AttributeProto, FunctionProto, NodeProto, helper

from ftp_deploy.plugins.token_compaction.contract import COMPACT_OP, DOMAIN, SCATTER_OP

# The opset version of the `ftp` domain that a model imports; the ops exist in version 1.
DOMAIN_OPSET = 1
# Nodes also carry `plugin_namespace` / `plugin_version`; ONNX lets a call site carry attributes
# its function does not declare, and ONNX Runtime ignores them when it inlines the body.
SPARSITY_ATTRIBUTES = ("sparsity_num", "sparsity_den")


def _attribute_ref(name: str) -> AttributeProto:
    """`value_int` of a Constant node bound to the calling node's int attribute `name`."""
    attribute = AttributeProto()
    attribute.name = "value_int"
    attribute.ref_attr_name = name
    attribute.type = AttributeProto.INT
    return attribute


def _int_constant(output: str, name: str) -> NodeProto:
    node = helper.make_node("Constant", [], [output])
    node.attribute.append(_attribute_ref(name))
    return node


def token_compact_function(opset: int) -> FunctionProto:
    """TokenCompact(hidden[B,T,D], scores[B,T]) -> (compact[B,K,D], indices[B,K]), K = T - T*num//den."""
    nodes = [
        helper.make_node("Constant", [], ["last_axis"], value_ints=[-1]),
        helper.make_node("Shape", ["hidden"], ["seq_len"], start=1, end=2),
        _int_constant("num", "sparsity_num"),
        _int_constant("den", "sparsity_den"),
        helper.make_node("Mul", ["seq_len", "num"], ["scaled"]),
        helper.make_node("Div", ["scaled", "den"], ["dropped"]),  # non-negative: truncation is floor
        helper.make_node("Sub", ["seq_len", "dropped"], ["kept"]),
        helper.make_node("TopK", ["scores", "kept"], ["top_scores", "by_score"], axis=1, largest=1, sorted=1),
        helper.make_node("TopK", ["by_score", "kept"], ["indices", "order"], axis=1, largest=0, sorted=1),
        helper.make_node("Unsqueeze", ["indices", "last_axis"], ["row_index"]),
        helper.make_node("GatherND", ["hidden", "row_index"], ["compact"], batch_dims=1),
    ]
    return helper.make_function(
        DOMAIN,
        COMPACT_OP,
        ["hidden", "scores"],
        ["compact", "indices"],
        nodes,
        [helper.make_opsetid("", opset)],
        attributes=list(SPARSITY_ATTRIBUTES),
        doc_string="TokenCompact with standard ops (reference: ftp_deploy.plugins.token_compaction.reference)",
    )


def token_scatter_function(opset: int) -> FunctionProto:
    """TokenScatter(hidden[B,T,D], updated[B,K,D], indices[B,K]) -> hidden with rows `indices` replaced."""
    nodes = [
        # ScatterND has no batch_dims: pair every index with its row number, [B, K, 2].
        helper.make_node("Constant", [], ["zero"], value_int=0),
        helper.make_node("Constant", [], ["one"], value_int=1),
        helper.make_node("Constant", [], ["last_axis"], value_ints=[-1]),
        helper.make_node("Shape", ["indices"], ["index_shape"]),
        helper.make_node("Shape", ["indices"], ["batch"], start=0, end=1),
        helper.make_node("Squeeze", ["batch"], ["batch_scalar"]),
        helper.make_node("Range", ["zero", "batch_scalar", "one"], ["rows"]),
        helper.make_node("Unsqueeze", ["rows", "last_axis"], ["row_column"]),
        helper.make_node("Expand", ["row_column", "index_shape"], ["row_of_slot"]),
        helper.make_node("Unsqueeze", ["row_of_slot", "last_axis"], ["row_part"]),
        helper.make_node("Unsqueeze", ["indices", "last_axis"], ["position_part"]),
        helper.make_node("Concat", ["row_part", "position_part"], ["slots"], axis=-1),
        helper.make_node("ScatterND", ["hidden", "slots", "updated"], ["out"]),
    ]
    return helper.make_function(
        DOMAIN,
        SCATTER_OP,
        ["hidden", "updated", "indices"],
        ["out"],
        nodes,
        [helper.make_opsetid("", opset)],
        doc_string="TokenScatter with standard ops (reference: ftp_deploy.plugins.token_compaction.reference)",
    )


def local_functions(opset: int) -> list[FunctionProto]:
    """Both functions, with bodies in the model's own standard opset."""
    return [token_compact_function(opset), token_scatter_function(opset)]
