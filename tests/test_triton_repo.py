"""`export --triton-repo`: config.pbtxt as Triton's own model-config protobuf reads it, and the files beside it."""

from __future__ import annotations

import builtins
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from ftp_deploy import cli
from ftp_deploy.engines.trt_profile import DEFAULT_PROFILE
from ftp_deploy.errors import MissingDependencyError, OutputFolderError
from ftp_deploy.exporters.triton_repo import CONFIG_FILE, read_config, write_triton_repository
from ftp_deploy.formats.export_manifest import DATA_FILE, MODEL_FILE, TensorRtSection, write_manifest
from tests.conftest import EXPORT_IR_VERSION
from tests.test_export_command import make_run
from tests.test_export_format import sample_manifest

pytest.importorskip("tritonclient.grpc", reason="needs pip install 'ftp-deploy[triton-server]'")
from tritonclient.grpc import model_config_pb2 as pb2

VOCAB, HIDDEN = 96, 48


def fake_artifact(folder: Path, logits_type: int = TensorProto.BFLOAT16, plan: bool = False) -> Path:
    """An artifact folder whose model.onnx declares the exporter's inputs and outputs (debug outputs too)."""
    folder.mkdir()
    names = ("input_ids", "attention_mask")
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "sequence"]) for n in names]
    outputs = [
        helper.make_tensor_value_info("logits", logits_type, ["batch", 1, VOCAB]),
        helper.make_tensor_value_info("indices_0", TensorProto.INT64, ["batch", "kept_0"]),
        helper.make_tensor_value_info("hidden_0", logits_type, ["batch", "sequence", HIDDEN]),
    ]
    nodes = [helper.make_node("Identity", ["input_ids"], ["indices_0"])]
    model = helper.make_model(helper.make_graph(nodes, "g", inputs, outputs), ir_version=EXPORT_IR_VERSION)
    onnx.save(model, folder / MODEL_FILE)
    (folder / DATA_FILE).write_bytes(b"weights")
    manifest = sample_manifest(debug_outputs=True)
    if plan:
        (folder / "model.plan").write_bytes(b"plan")
        section = TensorRtSection(DEFAULT_PROFILE.record(), "bf16", (), "build_engine.sh", plan_file="model.plan")
        manifest = replace(manifest, engine="trt", tensorrt=section)
    write_manifest(folder, manifest)
    return folder


def tensors(entries: Any) -> dict[str, tuple[str, list[int]]]:
    return {e.name: (pb2.DataType.Name(e.data_type), list(e.dims)) for e in entries}


def test_onnx_and_plan_models_parse_as_triton_model_configs(tmp_path: Path) -> None:
    art = fake_artifact(tmp_path / "art", plan=True)
    written = write_triton_repository(art, tmp_path / "repo", max_batch_size=16)
    assert written == [tmp_path / "repo/art" / CONFIG_FILE, tmp_path / "repo/art-trt" / CONFIG_FILE]
    onnx_config, plan_config = (read_config(path) for path in written)
    assert isinstance(onnx_config, pb2.ModelConfig)
    assert (onnx_config.name, onnx_config.platform, onnx_config.max_batch_size) == ("art", "onnxruntime_onnx", 16)
    assert (plan_config.name, plan_config.platform, plan_config.max_batch_size) == ("art-trt", "tensorrt_plan", 4)
    for config in (onnx_config, plan_config):
        assert config.HasField("dynamic_batching")
        assert tensors(config.input) == {"input_ids": ("TYPE_INT64", [-1]), "attention_mask": ("TYPE_INT64", [-1])}
        assert tensors(config.output) == {
            "logits": ("TYPE_BF16", [1, VOCAB]),
            "indices_0": ("TYPE_INT64", [-1]),
            "hidden_0": ("TYPE_BF16", [-1, HIDDEN]),
        }
    assert [g.kind for g in plan_config.instance_group] == [pb2.ModelInstanceGroup.KIND_GPU]
    versions = {p.relative_to(tmp_path / "repo").as_posix() for p in (tmp_path / "repo").rglob("*") if p.is_file()}
    onnx_files = {f"art/{CONFIG_FILE}", "art/1/model.onnx", "art/1/model.onnx.data"}
    assert versions == onnx_files | {f"art-trt/{CONFIG_FILE}", "art-trt/1/model.plan"}
    assert os.path.samefile(tmp_path / "repo/art/1/model.onnx", art / MODEL_FILE)  # linked, not copied


def test_an_fp32_graph_and_a_repository_that_already_holds_the_model(tmp_path: Path) -> None:
    art = fake_artifact(tmp_path / "art", TensorProto.FLOAT)
    (config_path,) = write_triton_repository(art, tmp_path / "repo", name="routed")
    assert tensors(read_config(config_path).output)["logits"] == ("TYPE_FP32", [1, VOCAB])
    before = config_path.read_bytes()
    with pytest.raises(OutputFolderError, match="already holds a model 'routed'"):
        write_triton_repository(art, tmp_path / "repo", name="routed")
    assert config_path.read_bytes() == before


def test_without_tritonclient_the_extra_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_tritonclient(name: str, *args: Any, **kwargs: Any) -> Any:
        if name.startswith("tritonclient"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_tritonclient)
    with pytest.raises(MissingDependencyError, match=r"pip install 'ftp-deploy\[triton-server\]'"):
        write_triton_repository(fake_artifact(tmp_path / "art"), tmp_path / "repo")
    assert not (tmp_path / "repo").exists()


def test_the_command_refuses_a_taken_model_name_before_exporting(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = make_run(tmp_path)
    (tmp_path / "repo" / "art").mkdir(parents=True)
    code = cli.main(["export", str(run), "--out", str(tmp_path / "art"), "--triton-repo", str(tmp_path / "repo")])
    assert code == 2 and "already holds a model 'art'" in capsys.readouterr().err
    assert not (tmp_path / "art").exists()


def test_exported_graph_runs_with_the_shapes_its_config_declares(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import onnxruntime

    run = make_run(tmp_path, kind="learned")
    argv = ["export", str(run), "--out", str(tmp_path / "art"), "--last-token-logits", "--triton-max-batch", "3"]
    assert cli.main([*argv, "--triton-repo", str(tmp_path / "repo"), "--device", "cpu"]) == 0
    assert f"{tmp_path / 'repo' / 'art' / CONFIG_FILE}" in capsys.readouterr().out
    config = read_config(tmp_path / "repo/art" / CONFIG_FILE)
    assert config.max_batch_size == 3  # --triton-max-batch, not the default of 8
    # What Triton's dynamic batcher would send: requests of one length stacked on the batch axis.
    session = onnxruntime.InferenceSession(str(tmp_path / "repo/art/1/model.onnx"))
    feeds = {e.name: np.ones((3, 10), dtype=np.int64) for e in config.input}
    (logits,) = session.run(None, feeds)
    declared = tensors(config.output)["logits"]
    assert declared == ("TYPE_FP32", [1, VOCAB]) and list(logits.shape) == [3, *declared[1]]
