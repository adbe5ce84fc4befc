"""`ftp-deploy export --engine onnx` on tiny models: the file, its parity with PyTorch, the artifact folder.

One small export (2 layers, static router) runs in the fast set; exports of 4-layer models with
the learned router, other dtypes and the dense baseline take about a minute each and are slow.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ftp_deploy.artifacts import RoutedArtifact, save_artifact
from ftp_deploy.errors import UnsupportedExportError
from ftp_deploy.exporters.attention import GQA_DOMAIN
from ftp_deploy.exporters.options import SUPPORTED_OPSETS
from ftp_deploy.exporters.pipeline import ExportResult, export_onnx
from ftp_deploy.exporters.spec import sample_inputs
from ftp_deploy.formats.export_manifest import DATA_FILE, MANIFEST_FILE, MODEL_FILE, manifest_mismatches, read_manifest
from ftp_deploy.models import model_ref_for
from ftp_deploy.plugins.token_compaction.contract import COMPACT_OP, DOMAIN, SCATTER_OP
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec, token_positions
from ftp_deploy.routing import Selection, reentries
from ftp_deploy.schedule import Schedule
from tests.conftest import VOCAB, tiny_model, tiny_tokenizer


def make_run(
    folder: Path,
    arch: str,
    kind: str,
    sparsities: list[float],
    sink_fraction: float = 0.0,
    routing_mode: str = "topk",
    router_seed: int = 1,
) -> RoutedModel:
    """A tiny base model saved as a HF folder and a run folder naming it; returns the routed model."""
    base = tiny_model(arch, num_layers=len(sparsities))
    base.save_pretrained(folder / "base")
    tiny_tokenizer().save_pretrained(folder / "base")
    torch.manual_seed(router_seed)
    spec = RouterSpec(kind=kind, sink_fraction=sink_fraction)
    routed = RoutedModel(base, Schedule.from_sparsities(sparsities), spec, routing_mode)
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, str(folder / "base"))), folder / "run")
    return routed


def run_file(path: Path, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
    return dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))


def keep_masks(indices: list[np.ndarray] | list[torch.Tensor], length: int) -> torch.Tensor:
    """[blocks, B, T] keep flags from each block's kept indices."""
    return torch.stack([Selection(torch.as_tensor(i)).keep_mask(length) for i in indices])


def assert_contract_nodes(path: Path, num_layers: int) -> None:
    model = onnx.load(path, load_external_data=False)
    custom = [node for node in model.graph.node if node.domain == DOMAIN]
    assert sorted(node.op_type for node in custom) == sorted([COMPACT_OP, SCATTER_OP] * num_layers)
    for node in custom:
        attributes = {a.name: a for a in node.attribute}
        assert attributes["plugin_namespace"].s == b"ftp" and attributes["plugin_version"].s == b"1"
    assert {(f.domain, f.name) for f in model.functions} == {(DOMAIN, COMPACT_OP), (DOMAIN, SCATTER_OP)}
    assert {o.domain: o.version for o in model.opset_import}[DOMAIN] == 1


@pytest.fixture(scope="module")
def small_export(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RoutedModel, ExportResult]]:
    folder = tmp_path_factory.mktemp("small")
    routed = make_run(folder, "llama", "static", [0.3, 0.0])
    yield routed, export_onnx(folder / "run", folder / "artifact", last_token_logits=True, debug_outputs=True)


def test_artifact_folder_holds_the_files_the_manifest_hashes(small_export: tuple[RoutedModel, ExportResult]) -> None:
    _, result = small_export
    assert sorted(p.name for p in result.out.iterdir()) == sorted([MODEL_FILE, DATA_FILE, MANIFEST_FILE])
    assert manifest_mismatches(result.out) == []
    manifest = read_manifest(result.out)
    assert manifest.schedule.sparsity_thousandths == (300, 0)
    assert manifest.op_contract == {
        "domain": "ftp", "ops": ["TokenCompact", "TokenScatter"], "plugin_namespace": "ftp", "plugin_version": "1",
    }  # fmt: skip
    assert manifest.outputs["indices_0"] == {"0": "batch", "1": "sequence - (sequence * 300) // 1000"}
    assert manifest.validation.routing_agreement == 1.0
    assert not any(p.name.startswith(".") for p in result.out.parent.iterdir())  # no staging left over


def test_every_custom_node_carries_the_plugin_attributes(small_export: tuple[RoutedModel, ExportResult]) -> None:
    _, result = small_export
    assert_contract_nodes(result.out / MODEL_FILE, num_layers=2)
    onnx.checker.check_model(str(result.out / MODEL_FILE), full_check=True)


def test_graph_axes_are_the_manifest_axes(small_export: tuple[RoutedModel, ExportResult]) -> None:
    _, result = small_export
    graph = onnx.load(result.out / MODEL_FILE, load_external_data=False).graph
    for values, key in ((graph.input, "inputs"), (graph.output, "outputs")):
        for value in values:
            dims = value.type.tensor_type.shape.dim
            named = {str(axis): dim.dim_param for axis, dim in enumerate(dims) if dim.dim_param}
            assert named == getattr(result.manifest, key)[value.name]
    assert [d.dim_value for d in graph.output[0].type.tensor_type.shape.dim][1:] == [1, VOCAB]


def test_a_head_size_gqa_refuses_gets_standard_ops(
    small_export: tuple[RoutedModel, ExportResult], tmp_path: Path
) -> None:
    """Heads of 12: the default (fused) attention falls back to standard ops and the manifest says so; an
    explicit --attention fused is refused before anything is written."""
    _, result = small_export
    manifest = result.manifest
    assert manifest.attention == "standard"
    assert manifest.graphs["prefill"].runtimes == ("onnxruntime", "tensorrt")
    nodes = onnx.load(result.out / MODEL_FILE, load_external_data=False).graph.node
    assert not any(node.domain == GQA_DOMAIN for node in nodes)
    with pytest.raises(UnsupportedExportError, match="a multiple of 8, not 12"):
        export_onnx(Path(manifest.source_run.path), tmp_path / "fused", attention="fused")
    assert not (tmp_path / "fused").exists()


def test_a_moved_artifact_runs_and_matches_pytorch(
    small_export: tuple[RoutedModel, ExportResult], tmp_path: Path
) -> None:
    routed, result = small_export
    moved = tmp_path / "elsewhere" / "artifact"
    moved.parent.mkdir()
    shutil.copytree(result.out, moved)
    model = onnx.load(moved / MODEL_FILE, load_external_data=False)
    locations = {entry.value for t in model.graph.initializer for entry in t.external_data if entry.key == "location"}
    assert locations == {DATA_FILE}  # relative to the file, so the folder can move
    # Other batch sizes than the export example's, and a single token (K = 1 in every block).
    for batch, length in ((3, 29), (1, 1)):
        input_ids, attention_mask = sample_inputs(batch, length, VOCAB, seed=5)
        outputs = run_file(moved / MODEL_FILE, input_ids, attention_mask)
        with torch.no_grad():
            expected = routed(input_ids, attention_mask, logits_to_keep=1)
        assert outputs["logits"].shape == (batch, 1, VOCAB)
        assert np.abs(outputs["logits"] - expected.logits.numpy()).max() <= 1e-4
        kept = keep_masks([outputs["indices_0"], outputs["indices_1"]], length)
        assert torch.equal(kept, torch.stack(expected.keep))


@pytest.mark.slow
def test_a_sink_prefix_exports_and_keeps_what_pytorch_keeps(tmp_path: Path) -> None:
    routed = make_run(tmp_path, "llama", "static", [0.5, 0.6], sink_fraction=0.25)
    export_onnx(tmp_path / "run", tmp_path / "artifact", debug_outputs=True)
    for seed, length in enumerate((13, 29)):  # ceil(0.25 * valid) differs from a rounded or floored count
        input_ids, attention_mask = sample_inputs(2, length, VOCAB, seed=seed)
        outputs = run_file(tmp_path / "artifact" / MODEL_FILE, input_ids, attention_mask)
        with torch.no_grad():
            expected = routed(input_ids, attention_mask)
        kept = keep_masks([outputs["indices_0"], outputs["indices_1"]], length)
        assert torch.equal(kept & attention_mask.bool(), torch.stack(expected.keep) & attention_mask.bool())
        valid = attention_mask.bool().numpy()
        assert np.abs(outputs["logits"] - expected.logits.numpy())[valid].max() <= 1e-4


def test_monotone_routing_exports_and_never_readmits_a_token(tmp_path: Path) -> None:
    """The live set travels in the attention-score table, so the per-block graph needs nothing more."""
    rising = [0.1, 0.3, 0.5]
    routed = make_run(tmp_path, "llama", "learned", rising, routing_mode="monotone", router_seed=3)
    export_onnx(tmp_path / "run", tmp_path / "artifact", debug_outputs=True)
    input_ids, attention_mask = sample_inputs(2, 30, VOCAB, seed=0)
    outputs = run_file(tmp_path / "artifact" / MODEL_FILE, input_ids, attention_mask)
    with torch.no_grad():
        expected = routed(input_ids, attention_mask)
        readmitting = RoutedModel(routed.base, routed.schedule, routed.router_spec, "topk", router=routed.router)
        topk = readmitting(input_ids, attention_mask)
    valid = attention_mask.bool()
    kept = keep_masks([outputs[f"indices_{block}"] for block in range(len(rising))], 30)
    assert torch.equal(kept & valid, torch.stack(expected.keep) & valid)
    assert reentries(list(kept), valid)[0] == 0
    assert reentries(topk.keep, valid)[0] > 0  # this router would re-admit tokens under top-k routing
    assert np.abs(outputs["logits"] - expected.logits.numpy())[valid.numpy()].max() <= 1e-4


# --- slow: 4-layer models, the learned router, other dtypes, the dense baseline -------------------


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_routed_export_matches_pytorch_compact_mode(arch: str, tmp_path: Path) -> None:
    """Two sequence lengths, batch 2 with a left-padded row, one file; learned router, 4 blocks."""
    routed = make_run(tmp_path, arch, "learned", [0.3, 0.5, 0.0, 0.25])
    export_onnx(tmp_path / "run", tmp_path / "artifact", debug_outputs=True)
    agreeing = total = 0
    for seed, length in enumerate((19, 67)):
        input_ids, attention_mask = sample_inputs(2, length, VOCAB, seed=seed)
        outputs = run_file(tmp_path / "artifact" / MODEL_FILE, input_ids, attention_mask)
        with torch.no_grad():
            expected = routed(input_ids, attention_mask)  # plain compact mode: SDPA, reference ops
        valid = attention_mask.bool()
        assert np.abs(outputs["logits"] - expected.logits.numpy())[valid.numpy()].max() <= 1e-3
        got = keep_masks([outputs[f"indices_{block}"] for block in range(4)], length)
        same = (got == torch.stack(expected.keep))[:, valid]
        agreeing, total = agreeing + int(same.sum()), total + same.numel()
    assert agreeing / total >= 0.999


@pytest.mark.slow
@pytest.mark.parametrize(("dtype", "opset"), [("fp16", 18), ("bf16", 23)])
def test_half_precision_exports_pass_the_checker(dtype: str, opset: int, tmp_path: Path) -> None:
    make_run(tmp_path, "qwen2", "learned", [0.3, 0.5, 0.0, 0.25])
    result = export_onnx(tmp_path / "run", tmp_path / "artifact", dtype=dtype, opset=opset)
    path = tmp_path / "artifact" / MODEL_FILE
    onnx.checker.check_model(str(path), full_check=True)
    assert_contract_nodes(path, num_layers=4)
    model = onnx.load(path, load_external_data=False)
    expected_type = {"fp16": onnx.TensorProto.FLOAT16, "bf16": onnx.TensorProto.BFLOAT16}[dtype]
    assert model.graph.output[0].type.tensor_type.elem_type == expected_type
    assert {o.domain: o.version for o in model.opset_import}[""] == opset
    assert result.manifest.validation.widened_to_fp32 is True
    assert result.manifest.smoke_inference["widened_to_fp32"] is (dtype == "bf16")
    assert_fp32_islands_and_finite_constants(path, tmp_path / "inferred.onnx")


def assert_fp32_islands_and_finite_constants(path: Path, scratch: Path) -> None:
    """Softmax, RMSNorm's mean of squares and the routing scores are fp32; no constant is inf or NaN."""
    onnx.shape_inference.infer_shapes_path(str(path), str(scratch))
    graph = onnx.load(scratch, load_external_data=False).graph
    types = {info.name: info.type.tensor_type.elem_type for info in [*graph.value_info, *graph.input, *graph.output]}
    fp32_values = [node.output[0] for node in graph.node if node.op_type == "Softmax"]
    fp32_values += [node.input[0] for node in graph.node if node.op_type == "ReduceMean"]
    fp32_values += [node.input[1] for node in graph.node if node.op_type == COMPACT_OP]
    assert fp32_values and {types[name] for name in fp32_values} == {onnx.TensorProto.FLOAT}
    constants = [onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer]
    constants += [
        onnx.numpy_helper.to_array(a.t) for n in graph.node for a in n.attribute if a.type == onnx.AttributeProto.TENSOR
    ]
    assert all(np.isfinite(c.astype(np.float64)).all() for c in constants)


@pytest.mark.slow
def test_dense_export_matches_the_base_model(tmp_path: Path) -> None:
    routed = make_run(tmp_path, "llama", "learned", [0.3, 0.5, 0.0, 0.25])
    result = export_onnx(tmp_path / "run", tmp_path / "dense", dense=True, last_token_logits=True)
    path = tmp_path / "dense" / MODEL_FILE
    assert not [node for node in onnx.load(path, load_external_data=False).graph.node if node.domain == DOMAIN]
    assert result.manifest.graph == "dense" and manifest_mismatches(tmp_path / "dense") == []
    input_ids, attention_mask = sample_inputs(2, 33, VOCAB, seed=3)
    with torch.no_grad():
        expected = routed.base(input_ids, attention_mask=attention_mask, position_ids=token_positions(attention_mask))
    logits = run_file(path, input_ids, attention_mask)["logits"]
    assert logits.shape == (2, 1, VOCAB)
    assert np.abs(logits - expected.logits[:, -1:].numpy()).max() <= 1e-3


@pytest.mark.slow
@pytest.mark.parametrize("opset", SUPPORTED_OPSETS)
def test_every_supported_opset_exports_and_runs(opset: int, tmp_path: Path) -> None:
    make_run(tmp_path, "llama", "static", [0.3])
    result = export_onnx(tmp_path / "run", tmp_path / "artifact", opset=opset)  # validated, smoke-run
    model = onnx.load(tmp_path / "artifact" / MODEL_FILE, load_external_data=False)
    assert {o.domain: o.version for o in model.opset_import}[""] == opset
    assert {f.opset_import[0].version for f in model.functions} == {opset}
    assert result.manifest.opset == opset
