"""The --with-past export and its ONNX Runtime generation loop against PyTorch's cached decode (FTP_SPEC 9)."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch
from transformers import AutoTokenizer

from ftp_deploy import cli
from ftp_deploy.artifacts import RoutedArtifact, load_routed, save_artifact
from ftp_deploy.cache_dir import CACHE_ENV
from ftp_deploy.engines import prepacked
from ftp_deploy.engines.onnx_generation import OnnxGenerator
from ftp_deploy.engines.prepacked import PREPACKED_DATA, PREPACKED_FILE, evict_stale, prepacked_folder, prepacked_graph
from ftp_deploy.engines.trt_profile import ShapeProfile
from ftp_deploy.errors import (
    CacheCapacityError,
    CacheMismatchError,
    PrefillOnlyExportError,
    PromptError,
    UnsupportedExportError,
)
from ftp_deploy.exporters.attention import RotaryTables, use_grouped_attention
from ftp_deploy.exporters.pieces import DecodeBlock, InPlaceDecodeBlock
from ftp_deploy.exporters.pipeline import export_onnx
from ftp_deploy.exporters.trt_export import TrtOptions, export_trt, trt_extension
from ftp_deploy.fileio import sha256_file
from ftp_deploy.formats.export_manifest import (
    CONCAT_CACHE,
    DECODER_FILE,
    GENERATOR_FILE,
    INPLACE_CACHE,
    MANIFEST_FILE,
    MODEL_FILE,
    read_manifest,
    write_manifest,
)
from ftp_deploy.generation.cache import RoutedCache
from ftp_deploy.generation.model import RoutedForCausalLM
from ftp_deploy.generation.reference import greedy_trace
from ftp_deploy.models import model_ref_for
from ftp_deploy.progress import NO_PROGRESS
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule
from tests.conftest import random_batch, tiny_model, tiny_tokenizer
from tests.test_export_command import make_run

PROMPT_LEN = 23
STEPS = 9
# Per-block sparsities that differ, so every layer's cache has its own length.
SCHEDULE = (0.3, 0.1, 0.4, 0.2)


def export_run(
    folder: Path, arch: str, kind: str, dense: bool = False, mode: str = "topk", **config: Any
) -> tuple[Path, Path]:
    """A tiny routed run of `arch` (`config` overriding its transformers config) and its --with-past export:
    (run folder, artifact folder).

    The tiny models' heads of 12 take the standard attention and the concat cache; hidden_size=64 gives
    heads of 16, which GroupQueryAttention takes: the fused prefill and the in-place decode cache."""
    base = tiny_model(arch, **config)
    base.save_pretrained(folder / "base")
    tiny_tokenizer().save_pretrained(folder / "base")
    routed = RoutedModel(base, Schedule.from_sparsities(list(SCHEDULE)), RouterSpec(kind=kind), mode)
    save_artifact(RoutedArtifact.from_model(routed, model_ref_for(base, str(folder / "base"))), folder / "run")
    export_onnx(folder / "run", folder / "art", with_past=True, dense=dense)
    return folder / "run", folder / "art"


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The default --with-past export (fused attention, in-place decode cache) of a static router."""
    return export_run(tmp_path_factory.mktemp("llama"), "llama", "static", hidden_size=64)


@pytest.fixture(scope="module")
def trt_export(llama_export: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The same run through `export --engine trt --onnx-only --with-past`: standard ops, concat decode cache."""
    art = tmp_path_factory.mktemp("trt") / "art"
    export_trt(llama_export[0], art, with_past=True, trt=TrtOptions(onnx_only=True))
    return llama_export[0], art


def compare_decode(run: Path, art: Path, cache_form: str = INPLACE_CACHE) -> None:
    """ONNX prefill + 9 decode steps (driven by PyTorch's greedy tokens) against routed_prefill + decode_step."""
    routed, _, _ = load_routed(run)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    trace = greedy_trace(routed, ids, mask, STEPS + 1)
    generator = OnnxGenerator.open(art, threads=1)
    assert generator.record.cache == cache_form
    worst = 0.0
    for step, reference in enumerate(trace.logits):
        if step == 0:
            logits = generator.prefill(ids.numpy(), mask.numpy(), max_new_tokens=STEPS)
        else:
            logits = generator.decode(trace.tokens[:, step - 1 : step].numpy())
        worst = max(worst, float(np.abs(logits - reference.numpy()).max()))
    print(f"max |ONNX - PyTorch| logits over prefill + {STEPS} decode steps: {worst:.2e}")
    assert worst <= 1e-4
    kept = [routed.schedule.kept(block, PROMPT_LEN) for block in range(len(routed.layers))]
    assert len(set(kept)) > 1
    assert generator.layer_lengths() == [k + STEPS for k in kept] == trace.cache.layer_lengths()
    cache = generator.cache
    assert cache is not None
    for layer, (keys, values, _) in enumerate(trace.cache):
        valid, ours = trace.cache.slot_valid[layer].numpy(), cache.numpy(layer, "valid")
        # The concat cache holds PyTorch's slot layout; the in-place one each row's entries packed first.
        expected = valid if cache_form == CONCAT_CACHE else np.arange(valid.shape[1]) < valid.sum(1)[:, None]
        assert np.array_equal(ours, expected)
        for part, reference in (("key", keys), ("value", values)):
            got = cache.numpy(layer, part).transpose(0, 2, 1, 3)[ours]  # valid slots: [n, kv_heads, head_dim]
            assert np.abs(got - reference.numpy().transpose(0, 2, 1, 3)[valid]).max() <= 1e-4
    # In place: buffers of K_l + STEPS slots, which the 9 steps filled.
    assert generator.kv_bytes() == sum(int(k.nbytes + v.nbytes) for k, v, _ in trace.cache)


def test_decode_graph_equals_pytorch_decode_step(llama_export: tuple[Path, Path], single_thread: None) -> None:
    compare_decode(*llama_export)


def test_monotone_router_exports_with_past_and_decodes_like_pytorch(tmp_path: Path, single_thread: None) -> None:
    """`train`'s default routing (a learned router): the with-past export validates and decodes as PyTorch's
    section-9 decode, in place."""
    compare_decode(*export_run(tmp_path, "llama", "learned", mode="monotone", hidden_size=64))


def test_tensorrt_decode_graph_runs_in_onnx_runtime_like_pytorch(
    trt_export: tuple[Path, Path], single_thread: None
) -> None:
    """--engine trt's decode graph: standard ops only (what TensorRT parses), the concat cache."""
    compare_decode(*trt_export, cache_form=CONCAT_CACHE)
    manifest = read_manifest(trt_export[1])
    assert manifest.graphs["decode"].runtimes == ("onnxruntime", "tensorrt")
    domains = {node.domain for node in onnx.load(trt_export[1] / DECODER_FILE, load_external_data=False).graph.node}
    assert domains <= {"", "ftp"}


def test_inplace_decode_writes_into_the_buffers_bound_as_past_and_present(llama_export: tuple[Path, Path]) -> None:
    """One GroupQueryAttention per layer reads each past buffer, and a step leaves every buffer where it was,
    its new slot written at each row's cached count."""
    art = llama_export[1]
    graph = onnx.load(art / DECODER_FILE, load_external_data=False).graph
    names = ("past.0.key", "past.3.value")
    readers = {name: [node.op_type for node in graph.node if name in node.input] for name in names}
    # The key buffer's Shape gives GroupQueryAttention its total_sequence_length (the capacity); nothing copies it.
    assert readers == {"past.0.key": ["Shape", "GroupQueryAttention"], "past.3.value": ["GroupQueryAttention"]}
    assert read_manifest(art).graphs["decode"].runtimes == ("onnxruntime",)
    generator = OnnxGenerator.open(art, threads=1)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    generator.prefill(ids.numpy(), mask.numpy(), max_new_tokens=3)
    cache = generator.cache
    assert cache is not None and cache.lengths is not None
    before = {name: value.data_ptr() for name, value in cache.tensors.items()}
    counts = [length.copy() for length in cache.lengths]
    keys = [cache.numpy(layer, "key") for layer in range(4)]
    generator.decode(np.asarray([[5], [7]]))
    assert {name: value.data_ptr() for name, value in generator.cache.tensors.items()} == before
    for layer in range(4):
        assert np.array_equal(generator.cache.lengths[layer], counts[layer] + 1)
        written = generator.cache.numpy(layer, "key") != keys[layer]  # [B, kv_heads, C, head_dim]
        slots = written.any(axis=(1, 3))
        assert np.array_equal(slots, np.arange(slots.shape[1]) == counts[layer][:, None])  # each row's count only


def test_the_generator_graph_holds_each_weight_once_and_generates_as_the_two_graphs(
    llama_export: tuple[Path, Path], single_thread: None
) -> None:
    """generator.onnx: prefill and decode under one If over the outer graph's weights (each transposed once
    there), in one session; it computes what the two graph files do."""
    art = llama_export[1]
    model = onnx.load(art / GENERATOR_FILE, load_external_data=False)
    weights = [tensor.name for tensor in model.graph.initializer if tensor.external_data]
    decoder = onnx.load(art / DECODER_FILE, load_external_data=False).graph.initializer
    assert len(set(weights)) == len(weights) and {t.name for t in decoder if t.external_data} <= set(weights)
    (choose,) = [node for node in model.graph.node if node.op_type == "If"]
    transposed = {node.input[0] for node in model.graph.node if node.op_type == "Transpose"}
    assert transposed and transposed <= set(weights)
    for branch in (attribute.g for attribute in choose.attribute):
        assert not [tensor.name for tensor in branch.initializer if tensor.external_data]
        assert not [node for node in branch.node if node.op_type == "Transpose" and node.input[0] in weights]
    merged = OnnxGenerator.open(art, threads=1)
    assert merged.prefill_session is merged.decode_session
    record = read_manifest(art).with_past
    assert record is not None
    two = OnnxGenerator.from_files(art / MODEL_FILE, art / DECODER_FILE, record, "two", threads=1)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    logits = [generator.prefill(ids.numpy(), mask.numpy(), max_new_tokens=STEPS) for generator in (merged, two)]
    for _ in range(STEPS):
        assert np.abs(logits[0] - logits[1]).max() <= 1e-4
        tokens = logits[0].argmax(-1)[:, None]
        logits = [generator.decode(tokens) for generator in (merged, two)]
    assert np.abs(logits[0] - logits[1]).max() <= 1e-4


def test_the_prepacked_copy_is_written_once_under_the_cache_root_and_generates_the_same(
    llama_export: tuple[Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    """open() runs ONNX Runtime's prepacked copy of the generator graph (engines/prepacked.py): written on
    the first open, reused after, the same logits as the graph itself; no cache to write, the graph itself."""
    art = llama_export[1]
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    identity = read_manifest(art).graph_hashes["generate"]
    copy = prepacked_folder(identity) / PREPACKED_FILE
    packed = OnnxGenerator.open(art, threads=1)
    assert copy.is_file() and (copy.parent / PREPACKED_DATA).is_file()

    def written_again(graph: Path, target: Path) -> None:
        raise AssertionError(f"the prepacked copy was written again, to {target}")

    monkeypatch.setattr(prepacked, "_save_optimized", written_again)
    OnnxGenerator.open(art, threads=1)
    plain = OnnxGenerator.open(art, threads=1, prepack=False)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    logits = [generator.prefill(ids.numpy(), mask.numpy(), max_new_tokens=3) for generator in (packed, plain)]
    for _ in range(3):
        assert np.abs(logits[0] - logits[1]).max() <= 1e-4
        tokens = logits[0].argmax(-1)[:, None]
        logits = [generator.decode(tokens) for generator in (packed, plain)]
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "file" / "cache"))  # cannot be created
    assert prepacked_graph(art / GENERATOR_FILE, identity) is None
    OnnxGenerator.open(art, threads=1).generate(ids.numpy(), mask.numpy(), max_new_tokens=2)


def test_only_the_most_recently_used_prepacked_copies_are_kept(tmp_path: Path) -> None:
    for age, name in enumerate("abcdef"):
        (tmp_path / name).mkdir()
        os.utime(tmp_path / name, (1000 - age, 1000 - age))  # a the newest
    (tmp_path / ".staging").mkdir()
    assert sorted(path.name for path in evict_stale(tmp_path, kept=4)) == ["e", "f"]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".staging", "a", "b", "c", "d"]


def test_a_generation_longer_than_the_cache_capacity_is_refused(llama_export: tuple[Path, Path]) -> None:
    generator = OnnxGenerator.open(llama_export[1], threads=1)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    generator.prefill(ids.numpy(), mask.numpy(), max_new_tokens=2)
    for _ in range(2):
        generator.decode(np.asarray([[5], [7]]))
    cache = generator.cache
    assert cache is not None and cache.lengths is not None
    full = [length.copy() for length in cache.lengths]
    with pytest.raises(CacheCapacityError, match="larger max_new_tokens"):
        generator.decode(np.asarray([[5], [7]]))
    assert all(np.array_equal(a, b) for a, b in zip(cache.lengths, full, strict=True))  # nothing written


@pytest.mark.slow
@pytest.mark.parametrize(
    ("arch", "kind", "config", "cache_form"),
    [
        ("mistral", "static", {"hidden_size": 64}, INPLACE_CACHE),
        ("qwen2", "learned", {"hidden_size": 64}, INPLACE_CACHE),
        ("qwen3", "learned", {"head_dim": 16}, INPLACE_CACHE),  # its per-head query/key norms before rotary
        ("qwen3", "learned", {}, CONCAT_CACHE),
    ],
)
def test_decode_graph_equals_pytorch_on_every_architecture(
    tmp_path: Path, arch: str, kind: str, config: dict[str, int], cache_form: str, single_thread: None
) -> None:
    compare_decode(*export_run(tmp_path, arch, kind, **config), cache_form)


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_inplace_decode_block_equals_the_transformers_layer(arch: str) -> None:
    """The in-place block calls the layer's modules itself (transformers rotates before any attention
    function): eagerly it must equal the layer run by DecodeBlock on the same cache, Qwen3's norms included."""
    model = tiny_model(arch, head_dim=16) if arch == "qwen3" else tiny_model(arch, hidden_size=64)
    use_grouped_attention(model)
    layer, rotary_emb = model.model.layers[0], model.model.rotary_emb
    generator = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 1, model.config.hidden_size, generator=generator)
    keys, values = (torch.randn(2, 2, 9, 16, generator=generator) for _ in range(2))
    counts = torch.tensor([6, 4], dtype=torch.int32)
    positions = torch.tensor([[11], [7]])
    cos, sin = rotary_emb(hidden, positions)
    valid = torch.arange(6)[None] < counts[:, None]  # the concat cache: the first 6 slots, row 1's first 4 valid
    with torch.no_grad():
        expected, *_ = DecodeBlock(layer)(hidden, cos, sin, keys[:, :, :6], values[:, :, :6], valid)
        tables = RotaryTables.of(rotary_emb, 64)
        got, key, value = InPlaceDecodeBlock(layer)(hidden, positions, tables.cos, tables.sin, keys, values, counts)
    assert (got - expected).abs().max().item() <= 1e-5
    rows = torch.arange(2)
    new_key = key[rows, :, counts.long()]  # written at each row's count; nothing else changed
    assert (
        new_key.abs().min() > 0
        and torch.equal(key[0, :, :6], keys[0, :, :6])
        and torch.equal(value[1, :, 5:], values[1, :, 5:])
    )


def test_onnx_greedy_loop_equals_transformers_generate(llama_export: tuple[Path, Path], single_thread: None) -> None:
    run, art = llama_export
    routed, _, _ = load_routed(run)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    with torch.no_grad():
        theirs = RoutedForCausalLM(routed).eval().generate(
            ids, attention_mask=mask, cache=RoutedCache(), do_sample=False, pad_token_id=0,
            max_new_tokens=STEPS + 1, eos_token_id=None,
        )[:, PROMPT_LEN:]  # fmt: skip
    streamed: list[np.ndarray] = []
    ours = OnnxGenerator.open(art, threads=1).generate(
        ids.numpy(), mask.numpy(), max_new_tokens=STEPS + 1, eos_token_ids=[], on_token=lambda t, _: streamed.append(t)
    )
    assert np.array_equal(ours.tokens, theirs.numpy())
    assert np.array_equal(np.stack(streamed, axis=1), ours.tokens) and ours.steps == STEPS + 1


def test_eos_ends_a_row_and_sampling_is_seeded(llama_export: tuple[Path, Path]) -> None:
    generator = OnnxGenerator.open(llama_export[1], threads=1)
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    greedy = generator.generate(ids.numpy(), mask.numpy(), max_new_tokens=6, eos_token_ids=[])
    stop = int(greedy.tokens[0, 2])
    first = int(np.flatnonzero(greedy.tokens[0] == stop)[0])
    ended = generator.generate(ids.numpy(), mask.numpy(), max_new_tokens=6, eos_token_ids=[stop])
    assert ended.finished[0] and np.array_equal(ended.tokens[0, : first + 1], greedy.tokens[0, : first + 1])
    assert (ended.tokens[0, first + 1 :] == generator.record.pad_token_id).all()
    sampled = [
        generator.generate(ids.numpy(), mask.numpy(), max_new_tokens=5, do_sample=True, top_p=0.9, seed=3)
        for _ in range(2)
    ]
    assert np.array_equal(sampled[0].tokens, sampled[1].tokens)


def test_manifest_lists_every_graph_with_its_hashes(llama_export: tuple[Path, Path]) -> None:
    art = llama_export[1]
    manifest = read_manifest(art)
    assert set(manifest.graphs) == {"prefill", "decode", "generate"}
    for record in manifest.graphs.values():
        assert record.sha256 == sha256_file(art / record.file)
        assert record.data_sha256 == sha256_file(art / record.data_file)
    assert manifest.graphs["decode"].file == DECODER_FILE and manifest.graphs["generate"].file == GENERATOR_FILE
    assert "past.0.key" in manifest.graphs["decode"].inputs and "present.3.valid" in manifest.graphs["prefill"].outputs
    # The decoder reads the prefill graph's weight file: no second copy of the weights.
    assert (art / DECODER_FILE).stat().st_size < (art / MODEL_FILE).stat().st_size
    assert manifest.with_past is not None and set(manifest.with_past.tokenizer_files) <= set(manifest.files)
    assert manifest.validation.decode_logits_max_abs_diff is not None
    assert manifest.validation.decode_logits_max_abs_diff <= 1e-4


def test_bad_prompts_are_prompt_errors(llama_export: tuple[Path, Path]) -> None:
    generator = OnnxGenerator.open(llama_export[1], threads=1)
    with pytest.raises(PromptError, match="empty"):
        generator.prefill(np.zeros((1, 0), dtype=np.int64))
    context = generator.record.max_positions
    with pytest.raises(PromptError, match=f"context of {context}"):
        generator.prefill(np.full((1, context + 1), 5))
    with pytest.raises(PromptError, match=f"context of {context}"):
        generator.generate(np.full((1, context - 2), 5), max_new_tokens=8)
    ids, mask = random_batch(2, 8, "right")
    with pytest.raises(PromptError, match="left padding"):
        generator.prefill(ids.numpy(), mask.numpy())
    with pytest.raises(PromptError, match="prefill first"):
        generator.decode(np.zeros((1, 1), dtype=np.int64))
    generator.prefill(np.full((2, 4), 5))
    with pytest.raises(PromptError, match="one token per row"):
        generator.decode(np.zeros((1, 1), dtype=np.int64))


def test_a_cache_from_another_export_is_refused(llama_export: tuple[Path, Path]) -> None:
    generator = OnnxGenerator.open(llama_export[1], threads=1)
    generator.prefill(np.full((1, 4), 5))
    assert generator.cache is not None
    other = OnnxGenerator(generator.prefill_session, generator.decode_session, generator.record, "another export")
    with pytest.raises(CacheMismatchError, match="another export"):
        other.decode(np.zeros((1, 1), dtype=np.int64), generator.cache)


def test_a_prefill_only_export_is_refused(llama_export: tuple[Path, Path], tmp_path: Path) -> None:
    """The folder a prefill-only export writes: no decoder, no decode graph in the manifest."""
    art = tmp_path / "prefill-only"
    shutil.copytree(llama_export[1], art)
    manifest = read_manifest(art)
    (art / DECODER_FILE).unlink()
    (art / MANIFEST_FILE).unlink()
    write_manifest(art, replace(manifest, graphs={"prefill": manifest.graphs["prefill"]}, with_past=None))
    with pytest.raises(PrefillOnlyExportError, match="--with-past"):
        OnnxGenerator.open(art)
    assert json.loads((art / MANIFEST_FILE).read_text())["graphs"].keys() == {"prefill"}


@pytest.mark.parametrize("dtype", ["fp16", pytest.param("bf16", marks=pytest.mark.slow)])
def test_half_precision_with_past_passes_verify(
    llama_export: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str], dtype: str
) -> None:
    """fp16 runs as it is against PyTorch in fp16, decoding included; bf16, which the CPU provider cannot
    run, widened to fp32 (and `generate` says so in one line)."""
    art = tmp_path / "art"
    assert cli.main(["export", str(llama_export[0]), "--out", str(art), "--with-past", "--dtype", dtype]) == 0
    assert read_manifest(art).with_past is not None and read_manifest(art).with_past.cache == INPLACE_CACHE
    assert cli.main(["verify", str(art), "--report", str(tmp_path / "report"), "--seq-lens", ""]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert report["decode"]["steps"] == 8 and report["decode"]["failures"] == []
    if dtype == "bf16":
        capsys.readouterr()
        assert cli.main(["generate", str(art), "--prompt", "w1 w2", "--max-new-tokens", "2"]) == 2
        assert "no kernels for: generate from an fp32 or fp16 export" in capsys.readouterr().err


def test_trt_onnx_only_writes_a_decode_profile_over_past_lengths(trt_export: tuple[Path, Path], tmp_path: Path) -> None:
    art = tmp_path / "trt"
    shutil.copytree(trt_export[1], art)
    profile = ShapeProfile((1, 1), (1, 512), (4, 2048))
    manifest = trt_extension(profile, onnx_only=True, timing_cache=None, progress=NO_PROGRESS)(art, read_manifest(art))
    assert manifest.tensorrt is not None and manifest.tensorrt.decode_profile is not None
    shapes = manifest.tensorrt.decode_profile["inputs"]
    assert shapes["input_ids"] == {"min": [1, 1], "opt": [1, 1], "max": [4, 1]}
    record = manifest.with_past
    assert record is not None
    for layer, num in enumerate(manifest.schedule.sparsity_thousandths):
        kept = 512 - 512 * num // 1000  # K_l at the opt prompt length: what a routed layer holds there
        key = shapes[f"past.{layer}.key"]
        assert key == {
            "min": [1, record.kv_heads, 1, record.head_dim],
            "opt": [1, record.kv_heads, kept, record.head_dim],
            "max": [4, record.kv_heads, 2047, record.head_dim],
        }
        assert shapes[f"past.{layer}.valid"]["max"] == [4, 2047]
    assert len({shapes[f"past.{layer}.key"]["opt"][2] for layer in range(4)}) > 1


def test_with_past_trt_needs_onnx_only(llama_export: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(UnsupportedExportError, match="--onnx-only"):
        export_trt(llama_export[0], tmp_path / "art", with_past=True)


@pytest.mark.slow
def test_smollm2_with_past_export_decodes_like_pytorch(smollm2, tmp_path: Path) -> None:
    """The real model: prefill + 8 decode steps, batch 2 left-padded, and a greedy continuation."""
    routed = RoutedModel(smollm2.model, Schedule.uniform(0.3, smollm2.model.config.num_hidden_layers))
    save_artifact(RoutedArtifact.from_model(routed, smollm2.ref), tmp_path / "run")
    export_onnx(tmp_path / "run", tmp_path / "art", with_past=True)
    generator = OnnxGenerator.open(tmp_path / "art", threads=2)
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "art")  # the export's own
    prompts = ["The capital of France is", "One, two, three, four, five, six, seven, eight,"]
    ids = tokenizer(prompts, padding=True, padding_side="left", return_tensors="pt")
    assert ids.attention_mask[0, 0] == 0 and bool(ids.attention_mask[:, -1].all())  # left-padded
    trace = greedy_trace(routed, ids.input_ids, ids.attention_mask, 9)
    ours = generator.generate(ids.input_ids.numpy(), ids.attention_mask.numpy(), max_new_tokens=9, eos_token_ids=[])
    assert np.array_equal(ours.tokens, trace.tokens.numpy())
    prompt = ids.attention_mask.shape[1]
    assert generator.layer_lengths() == [routed.schedule.kept(block, prompt) + 8 for block in range(30)]


@pytest.mark.parametrize(
    ("options", "fragment"),
    [
        (["--engine", "trt"], "needs --onnx-only"),
    ],
)
def test_with_past_refusals_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], options: list[str], fragment: str
) -> None:
    run = make_run(tmp_path)
    code = cli.main(["export", str(run), "--out", str(tmp_path / "art"), "--with-past", *options])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err
    assert not (tmp_path / "art").exists()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_grouped_attention_equals_eager_attention(arch: str) -> None:
    """The exporter's attention (no repeated key/value heads) against transformers' eager attention."""
    model = tiny_model(arch)
    model.set_attn_implementation("eager")
    ids, mask = random_batch(2, 20, "left")
    with torch.no_grad():
        eager = model(ids, attention_mask=mask).logits
        use_grouped_attention(model)
        grouped = model(ids, attention_mask=mask).logits
    assert (eager - grouped)[mask.bool()].abs().max().item() <= 1e-6


@pytest.mark.slow
def test_dense_with_past_export_decodes_like_the_unrouted_model(tmp_path: Path, single_thread: None) -> None:
    run, art = export_run(tmp_path, "llama", "static", dense=True, hidden_size=64)
    routed, _, _ = load_routed(run)
    unrouted = RoutedModel(routed.base, Schedule.from_sparsities([0.0] * len(routed.layers)))
    ids, mask = random_batch(2, PROMPT_LEN, "left")
    trace = greedy_trace(unrouted, ids, mask, STEPS + 1)
    generator = OnnxGenerator.open(art, threads=1)
    ours = generator.generate(ids.numpy(), mask.numpy(), max_new_tokens=STEPS + 1, eos_token_ids=[])
    assert np.array_equal(ours.tokens, trace.tokens.numpy())
    assert generator.layer_lengths() == [PROMPT_LEN + STEPS] * len(routed.layers)
