"""export --quantize int4|int8: MatMulNBits for every weight MatMul, the compaction nodes kept, strict parity
against PyTorch computing with the file's own blocks dequantized (prefill, decode, greedy generation)."""

from __future__ import annotations

import collections
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

from ftp_deploy import cli
from ftp_deploy.artifacts import RoutedArtifact, load_routed, save_artifact
from ftp_deploy.comparison.dequantize import dequantize, use_stored_weights
from ftp_deploy.engines.onnx_generation import OnnxGenerator
from ftp_deploy.engines.widen import fp32_arithmetic
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.exporters.quantize import quantize_graph
from ftp_deploy.formats.export_manifest import (
    DATA_FILE,
    DECODER_FILE,
    GENERATOR_FILE,
    MODEL_FILE,
    QUANTIZED_DOMAIN,
    quantized_names,
    read_manifest,
)
from ftp_deploy.formats.verify_report import VerifyReport
from ftp_deploy.generation.reference import greedy_trace
from ftp_deploy.models import model_ref_for
from ftp_deploy.plugins.token_compaction.contract import DOMAIN
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import EXPORT_IR_VERSION, random_batch, tiny_model, tiny_tokenizer
from tests.test_cli import assert_one_error_line

SCHEDULE = (0.3, 0.1)
LINEARS_PER_LAYER = 7  # q, k, v, o, gate, up, down
# (graph, precision, with_past): routed and dense, int4 and int8, with and without the decode graph.
EXPORTS = [("routed", "int4", True), ("dense", "int8", True), ("routed", "int8", False), ("dense", "int4", False)]
# The prefill's attention: the onnx default (GroupQueryAttention, heads of 16 fit it), and standard ops once.
STANDARD = ("routed", "int8", False)
# The fp32 routed exports the quantized ones are compared with, one per attention form (as above).
REFERENCES = [("routed", None, True), ("routed", None, False)]


def attention_of(key: tuple[str, str | None, bool]) -> str:
    return "standard" if key in (STANDARD, ("routed", None, False)) else "fused"


@pytest.fixture(scope="module")
def exports(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str | None, bool], Path]:
    """A tiny LLaMA (tied embeddings, heads of 16), a learned router, its fp32 routed exports and the quantized ones."""
    root = tmp_path_factory.mktemp("quantize")
    base = tiny_model("llama", num_layers=len(SCHEDULE), tie_word_embeddings=True, hidden_size=64)
    base.save_pretrained(root / "base")
    tiny_tokenizer().save_pretrained(root / "base")
    torch.manual_seed(1)
    routed = RoutedModel(base, Schedule.from_sparsities(list(SCHEDULE)), RouterSpec(kind="learned"), "monotone")
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, str(root / "base"))), root / "run")
    folders: dict[tuple[str, str | None, bool], Path] = {}
    for key in [*REFERENCES, *EXPORTS]:
        graph, precision, with_past = key
        folder = root / f"{graph}-{precision}-{with_past}"
        dense, attention = graph == "dense", attention_of(key)
        export_onnx(root / "run", folder, dense=dense, with_past=with_past, quantize=precision, attention=attention)
        folders[key] = folder
    folders[("run", None, False)] = root / "run"
    return folders


def op_counts(path: Path) -> collections.Counter[tuple[str, str]]:
    return collections.Counter((node.domain, node.op_type) for node in ir.load(path).graph)


def weight_matmuls(path: Path) -> int:
    """The MatMuls of an fp32 export that read Transpose(W) of a base-model weight W (the router's stay fp32)."""
    count = 0
    for node in ir.load(path).graph:
        producer = node.inputs[1].producer() if node.op_type == "MatMul" and node.inputs[1] is not None else None
        if producer is not None and producer.op_type == "Transpose":
            weight = producer.inputs[0]
            count += weight is not None and weight.is_initializer() and not (weight.name or "").startswith("router.")
    return count


def compaction(path: Path) -> tuple[list[tuple[str, dict[str, object]]], set[tuple[str, str]]]:
    """Every ftp:: node with its attributes, and the model-local functions."""
    model = onnx.load(path, load_external_data=False)
    nodes = [
        (node.op_type, {a.name: helper.get_attribute_value(a) for a in node.attribute})
        for node in model.graph.node
        if node.domain == DOMAIN
    ]
    return nodes, {(function.domain, function.name) for function in model.functions}


@pytest.mark.parametrize(("graph", "precision", "with_past"), EXPORTS)
def test_every_weight_matmul_is_matmulnbits_and_the_compaction_nodes_stay(
    exports: dict[tuple[str, str | None, bool], Path], graph: str, precision: str, with_past: bool
) -> None:
    folder, fp32 = exports[(graph, precision, with_past)], exports[("routed", None, with_past)]
    manifest = read_manifest(folder)
    assert manifest.attention == attention_of((graph, precision, with_past))
    assert manifest.quantization is not None and manifest.quantization.precision == precision
    assert manifest.quantization.bits == int(precision[3:]) and manifest.quantization.block_size == 32
    roles = [MODEL_FILE, DECODER_FILE] if with_past else [MODEL_FILE]
    merged = [GENERATOR_FILE] if manifest.with_past is not None and manifest.with_past.inplace else []
    assert {record.file for record in manifest.graphs.values()} == {*roles, *merged}
    for name in roles:
        path = folder / name
        nodes, functions = compaction(path)
        if graph == "routed":  # what the fp32 export of the same run has, node for node
            assert (nodes, functions) == compaction(fp32 / name)
            assert len(nodes) == (2 * len(SCHEDULE) if name == MODEL_FILE else 0)
        else:
            assert nodes == []
        counts = op_counts(path)
        # A routed prefill runs q_proj twice per block (every token, then the kept ones): the fp32 export's count.
        linears = weight_matmuls(fp32 / name) if graph == "routed" else LINEARS_PER_LAYER * len(SCHEDULE) + 1
        assert counts[(QUANTIZED_DOMAIN, "MatMulNBits")] == linears  # + 1: the LM head
        assert counts[(QUANTIZED_DOMAIN, "GatherBlockQuantized")] == 1
        model = ir.load(path)
        assert not [node.name for node in model.graph if node.op_type == "Gather" and node.inputs[0].is_initializer()]
        for node in model.graph:
            if node.op_type == "MatMulNBits":
                assert node.attributes["bits"].as_int() == int(precision[3:])
                assert node.attributes["accuracy_level"].as_int() == 4
            if node.op_type == "MatMul":  # what is left: attention, and the fp32 router (a learned one)
                weight = node.inputs[1].producer().inputs[0] if node.inputs[1].producer() else None
                assert weight is None or not weight.is_initializer() or weight.name.startswith("router."), node.name
        fp32_weights = [
            name for name, value in model.graph.initializers.items()
            if value.dtype == ir.DataType.FLOAT and len(value.shape) == 2
            and not name.startswith(("router.", "rotary.")) and not name.endswith("_scales")
        ]  # fmt: skip
        assert fp32_weights == []  # the tied embedding too: no fp32 copy of any base-model weight
        assert "model.embed_tokens.weight" not in model.graph.initializers


def test_every_graph_reads_one_copy_of_the_blocks(exports: dict[tuple[str, str | None, bool], Path]) -> None:
    folder = exports[("routed", "int4", True)]
    offsets = {}
    for name in (MODEL_FILE, DECODER_FILE, GENERATOR_FILE):  # the generator graph: both graphs' blocks
        model = onnx.load(folder / name, load_external_data=False)
        stored = {t.name: {e.key: e.value for e in t.external_data} for t in model.graph.initializer if t.external_data}
        offsets[name] = {name: (where["location"], where["offset"]) for name, where in stored.items()}
    packed = quantized_names("model.embed_tokens.weight", 4)[0]  # tied: the LM head's blocks too
    assert offsets[MODEL_FILE][packed] == offsets[DECODER_FILE][packed] and offsets[MODEL_FILE][packed][0] == DATA_FILE
    assert all(offsets[MODEL_FILE][name] == where for name, where in offsets[DECODER_FILE].items())
    assert offsets[GENERATOR_FILE] == {**offsets[DECODER_FILE], **offsets[MODEL_FILE]}
    assert sorted(path.name for path in folder.glob("*.data")) == [DATA_FILE]


@pytest.mark.parametrize("key", EXPORTS)
def test_verify_passes_against_the_dequantized_reference(
    exports: dict[tuple[str, str | None, bool], Path],
    key: tuple[str, str, bool],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`ftp-deploy verify` exits 0 at its default (fp32) tolerances: prefill parity and, with past, decode."""
    code = cli.main(["verify", str(exports[key]), "--seq-lens", "", "--decode-steps", "5", "--report", str(tmp_path)])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.out + captured.err
    report = VerifyReport.read(tmp_path)
    assert report.passed and (report.decode is not None and report.decode.passed) == key[2]
    logits = report.parity.max_abs_diff("logits")
    assert logits is not None and logits <= 1e-5  # fp32 arithmetic on the same weights: rounding only
    assert "dequantized" in report.compared and report.dtype == "fp32"


@pytest.mark.parametrize("key", [("routed", "int4", True), ("dense", "int8", True)])
def test_greedy_generation_equals_pytorch_with_the_dequantized_weights(
    exports: dict[tuple[str, str | None, bool], Path], key: tuple[str, str, bool], single_thread: None
) -> None:
    folder = exports[key]
    routed, _, _ = load_routed(exports[("run", None, False)])
    manifest = read_manifest(folder)
    assert manifest.quantization is not None
    replaced = use_stored_weights(routed.base, folder / MODEL_FILE, manifest.quantization)
    assert len(replaced) == LINEARS_PER_LAYER * len(SCHEDULE) + 1  # the tied embedding and LM head are one
    if key[0] == "dense":
        routed = RoutedModel(routed.base, Schedule.from_sparsities([0.0] * len(SCHEDULE)))
    ids, mask = random_batch(2, 23, "left")
    trace = greedy_trace(routed, ids, mask, 10)
    generator = OnnxGenerator.open(folder, threads=1, fp32_arithmetic=True)
    ours = generator.generate(ids.numpy(), mask.numpy(), max_new_tokens=10, eos_token_ids=[])
    assert np.array_equal(ours.tokens, trace.tokens.numpy())
    stepper = OnnxGenerator.open(folder, threads=1, fp32_arithmetic=True)
    for step, reference in enumerate(trace.logits):
        if step == 0:
            logits = stepper.prefill(ids.numpy(), mask.numpy(), max_new_tokens=len(trace.logits))
        else:
            logits = stepper.decode(trace.tokens[:, step - 1 : step].numpy())
        assert np.abs(logits - reference.numpy()).max() <= 1e-4, step


@pytest.mark.parametrize("bits", [4, 8])
def test_the_blocks_are_onnxruntimes_quantizer_s_and_dequantize_as_matmulnbits_computes(bits: int) -> None:
    """Transpose(W) + MatMul rewritten here, and MatMul(W^T) through MatMulNBitsQuantizer, store the same bytes;
    dequantized, they give what MatMulNBits computes at accuracy_level 0 (K = 48: a padded block)."""
    rows, columns = 40, 48
    weight = np.random.default_rng(bits).standard_normal((rows, columns)).astype(np.float32)
    ours = _one_matmul(weight, transposed_in_graph=True)
    quantize_graph(ours, f"int{bits}", {"w"})
    theirs = MatMulNBitsQuantizer(ir.to_proto(_one_matmul(weight.T.copy(), transposed_in_graph=False)),
                                  block_size=32, is_symmetric=False, accuracy_level=4, bits=bits)  # fmt: skip
    theirs.process()
    stored = {t.name: numpy_helper.to_array(t) for t in theirs.model.model.graph.initializer}
    names = quantized_names("w", bits)
    arrays = [ours.graph.initializers[name].const_value.numpy() for name in names]
    for name, array in zip(names, arrays, strict=True):
        assert np.array_equal(array, stored[name]), name
    assert [n.op_type for n in ours.graph] == ["MatMulNBits"] and "w" not in ours.graph.initializers
    activations = np.random.default_rng(0).standard_normal((3, columns)).astype(np.float32)
    computed = _run_accuracy_level_0(ours, activations)
    assert np.abs(activations @ dequantize(*arrays, bits=bits, columns=columns).T - computed).max() <= 1e-4


def _one_matmul(weight: np.ndarray, transposed_in_graph: bool) -> ir.Model:
    columns = weight.shape[1] if transposed_in_graph else weight.shape[0]
    rows = weight.shape[0] if transposed_in_graph else weight.shape[1]
    nodes = [helper.make_node("MatMul", ["a", "wt" if transposed_in_graph else "w"], ["y"])]
    if transposed_in_graph:
        nodes.insert(0, helper.make_node("Transpose", ["w"], ["wt"], perm=[1, 0]))
    graph = helper.make_graph(
        nodes, "one", [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["m", columns])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", rows])], [numpy_helper.from_array(weight, "w")],
    )  # fmt: skip
    opsets = [helper.make_opsetid("", 18)]
    return ir.from_proto(helper.make_model(graph, opset_imports=opsets, ir_version=EXPORT_IR_VERSION))


def _run_accuracy_level_0(model: ir.Model, activations: np.ndarray) -> np.ndarray:
    proto = fp32_arithmetic(ir.to_proto(model))  # what parity runs
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"a": activations})[0]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--quantize", "int4", "--engine", "trt", "--onnx-only"], "TensorRT's ONNX parser does not take"),
        (["--quantize", "int3"], "unknown --quantize 'int3'; choose one of int4, int8"),
        (["--quantize", "int8", "--dtype", "fp16"], "leave --dtype at fp32"),
    ],
)
def test_quantize_refusals_are_one_line(
    exports: dict[tuple[str, str | None, bool], Path],
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    options: list[str],
    fragment: str,
) -> None:
    run = exports[("run", None, False)]
    code = cli.main(["export", str(run), "--out", str(tmp_path / "art"), *options])
    assert code == 2
    assert_one_error_line(capsys.readouterr().err, fragment)
    assert not (tmp_path / "art").exists()
