"""The prefill's attention over each block's kept tokens (exporters/attention.py), on tiny models whose head size
ONNX Runtime's GroupQueryAttention takes (16): the fused prefill equals PyTorch at short and long prompts (one
above 2048), batch 2 left-padded, for the static and the learned router; it holds no Softmax over a [K, K]
score matrix; its decode continues as before; the TensorRT form is standard ops; the manifest says which
runtime runs which graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from ftp_deploy import cli
from ftp_deploy.artifacts import RoutedArtifact, load_routed, save_artifact
from ftp_deploy.comparison.parity import allows
from ftp_deploy.errors import UnsupportedExportError
from ftp_deploy.exporters.attention import GQA_DOMAIN, GQA_OP
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.exporters.spec import sample_inputs
from ftp_deploy.exporters.trt_export import TrtOptions, export_trt
from ftp_deploy.formats.export_manifest import DECODER_FILE, MODEL_FILE, read_manifest
from ftp_deploy.formats.verify_report import Tolerance
from ftp_deploy.generation.cache import RoutedCache
from ftp_deploy.models import model_ref_for
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec, token_positions
from ftp_deploy.schedule import Schedule
from tests.conftest import VOCAB, tiny_model, tiny_tokenizer
from tests.test_onnx_generation import SCHEDULE, compare_decode

# Prompt lengths: below and above the router's attention window (32), and above 2048.
LENGTHS = (24, 300, 2100)
TOLERANCE = Tolerance.for_dtype("fp32")


def gqa_model() -> torch.nn.Module:
    """A tiny LLaMA with heads of 16 (GroupQueryAttention needs a multiple of 8) and room for 2100 positions."""
    return tiny_model("llama", hidden_size=64, max_position_embeddings=4096)


def make_run(folder: Path, kind: str) -> Path:
    base = gqa_model()
    base.save_pretrained(folder / "base")
    tiny_tokenizer().save_pretrained(folder / "base")
    torch.manual_seed(1)  # the learned router's initial weights
    routed = RoutedModel(base, Schedule.from_sparsities(list(SCHEDULE)), RouterSpec(kind=kind))
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, str(folder / "base"))), folder / "run")
    return folder / "run"


@pytest.fixture(scope="module", params=["static", "learned"])
def fused_export(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(run, artifact) of the default --with-past export: fused attention."""
    folder = tmp_path_factory.mktemp(f"fused-{request.param}")
    run = make_run(folder, request.param)
    export_onnx(run, folder / "art", with_past=True)
    return run, folder / "art"


def prefill_outputs(path: Path, ids: torch.Tensor, mask: torch.Tensor) -> dict[str, np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    return dict(zip([o.name for o in session.get_outputs()], outputs, strict=True))


def ops(path: Path) -> list[tuple[str, str]]:
    return [(node.domain, node.op_type) for node in onnx.load(path, load_external_data=False).graph.node]


def assert_prefill_equals_pytorch(run: Path, path: Path, lengths: tuple[int, ...] = LENGTHS) -> None:
    """The graph's next-token logits against PyTorch's compact mode (SDPA) and masked mode, and every
    layer's cache against PyTorch's RoutedCache, batch 2 with row 1 left-padded by a third."""
    routed, _, _ = load_routed(run)
    for seed, length in enumerate(lengths):
        ids, mask = sample_inputs(2, length, VOCAB, seed=seed)
        got = prefill_outputs(path, ids, mask)
        cache = RoutedCache()
        with torch.no_grad():
            compact = routed(ids, mask, logits_to_keep=1, cache=cache).logits[:, -1]
            masked = routed(ids, mask, mode="masked").logits[:, -1]
        for reference in (compact, masked):
            assert allows(TOLERANCE, got["logits"][:, -1], reference.numpy()), f"logits at length {length}"
        for layer, (keys, values, _) in enumerate(cache):
            valid = cache.slot_valid[layer].numpy()
            assert np.array_equal(got[f"present.{layer}.valid"], valid)
            for part, want in (("key", keys), ("value", values)):
                # Valid slots only: what padding's own slots hold is never read.
                ours = got[f"present.{layer}.{part}"].transpose(0, 2, 1, 3)[valid]
                assert np.abs(ours - want.numpy().transpose(0, 2, 1, 3)[valid]).max() <= 1e-4, (length, layer, part)


def test_fused_prefill_equals_pytorch_at_long_prompts(fused_export: tuple[Path, Path]) -> None:
    run, art = fused_export
    assert_prefill_equals_pytorch(run, art / MODEL_FILE)


def test_fused_prefill_holds_no_score_matrix(fused_export: tuple[Path, Path]) -> None:
    """One GroupQueryAttention per block; a Softmax only where the learned router's attention-score factor
    reads its last 32 queries (a [B, H, 32, K] matrix), none in the static router's graph."""
    run, art = fused_export
    routed, _, _ = load_routed(run)
    found = ops(art / MODEL_FILE)
    assert found.count((GQA_DOMAIN, GQA_OP)) == len(routed.layers)
    softmax = found.count(("", "Softmax"))
    assert softmax == (len(routed.layers) if routed.router is not None else 0)
    manifest = read_manifest(art)
    assert manifest.attention == "fused"
    assert manifest.graphs["prefill"].runtimes == ("onnxruntime",)
    # Its decode graph writes the cache in place through the same contrib op.
    assert manifest.graphs["decode"].runtimes == ("onnxruntime",) and manifest.with_past is not None
    assert manifest.with_past.cache == "inplace"
    assert ops(art / DECODER_FILE).count((GQA_DOMAIN, GQA_OP)) == len(routed.layers)


def test_decode_continues_a_fused_prefill_like_pytorch(fused_export: tuple[Path, Path], single_thread: None) -> None:
    compare_decode(*fused_export)


def test_dense_fused_prefill_equals_the_unrouted_model_at_long_prompts(tmp_path: Path) -> None:
    run = make_run(tmp_path, "static")
    export_onnx(run, tmp_path / "art", dense=True, with_past=True)
    assert ops(tmp_path / "art" / MODEL_FILE).count((GQA_DOMAIN, GQA_OP)) == len(SCHEDULE)
    routed, _, _ = load_routed(run)
    for seed, length in enumerate(LENGTHS):
        ids, mask = sample_inputs(2, length, VOCAB, seed=seed)
        got = prefill_outputs(tmp_path / "art" / MODEL_FILE, ids, mask)
        with torch.no_grad():
            want = routed.base(ids, attention_mask=mask, position_ids=token_positions(mask)).logits[:, -1]
        assert allows(TOLERANCE, got["logits"][:, -1], want.numpy()), f"logits at length {length}"
        valid = mask.bool().numpy()
        for layer in range(len(SCHEDULE)):  # every token cached, valid ones first
            assert np.array_equal(got[f"present.{layer}.valid"], np.sort(valid, axis=1)[:, ::-1])


def test_trt_form_is_standard_ops_and_equals_pytorch(tmp_path: Path) -> None:
    run = make_run(tmp_path, "learned")
    export_trt(run, tmp_path / "art", trt=TrtOptions(onnx_only=True), last_token_logits=True)
    found = ops(tmp_path / "art" / MODEL_FILE)
    assert not any(domain == GQA_DOMAIN for domain, _ in found)
    manifest = read_manifest(tmp_path / "art")
    assert manifest.attention == "standard"
    assert manifest.graphs["prefill"].runtimes == ("onnxruntime", "tensorrt")
    routed, _, _ = load_routed(run)
    with torch.no_grad():
        for seed, length in enumerate(LENGTHS[:2]):
            ids, mask = sample_inputs(2, length, VOCAB, seed=seed)
            got = prefill_outputs(tmp_path / "art" / MODEL_FILE, ids, mask)["logits"][:, -1]
            assert allows(TOLERANCE, got, routed(ids, mask, logits_to_keep=1).logits[:, -1].numpy())
    with pytest.raises(UnsupportedExportError, match="standard ONNX ops"):
        export_trt(run, tmp_path / "fused", trt=TrtOptions(onnx_only=True), attention="fused")


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--attention", "flash"], "unknown --attention 'flash'"),
        (["--engine", "trt", "--onnx-only", "--attention", "fused"], "standard ONNX ops"),
    ],
)
def test_attention_refusals_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], fragment: str
) -> None:
    run = make_run(tmp_path, "static")
    code = cli.main(["export", str(run), "--out", str(tmp_path / "art"), *options])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "art").exists()
