"""ONNX Runtime engine: lazy loaders, the runner's lifecycle and IO binding, provider selection."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper
from polygraphy.comparator import Comparator
from polygraphy.exception import PolygraphyException

from ftp_deploy.engines.onnx_runtime import (
    DEVICE_PROVIDERS,
    OrtRunner,
    SessionFromOnnx,
    SessionOptionsLoader,
    available_devices,
    execution_providers,
)
from ftp_deploy.errors import MissingDependencyError
from tests.conftest import EXPORT_IR_VERSION


def affine_model(path: Path, offset: float = 1.0) -> Path:
    """y = 2x + offset and s = sum(x) over a dynamic [N, 3] input."""
    graph = helper.make_graph(
        [
            helper.make_node("Mul", ["x", "two"], ["doubled"]),
            helper.make_node("Add", ["doubled", "one"], ["y"]),
            helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
        ],
        "affine",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3]), helper.make_tensor_value_info("s", 1, [])],
        [
            helper.make_tensor("two", TensorProto.FLOAT, [], [2.0]),
            helper.make_tensor("one", TensorProto.FLOAT, [], [offset]),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=EXPORT_IR_VERSION), path)
    return path


def test_loaders_do_nothing_until_called(tmp_path: Path) -> None:
    loader = SessionFromOnnx(tmp_path / "not-yet-written.onnx")
    runner = OrtRunner(loader)  # neither reads the file
    affine_model(tmp_path / "not-yet-written.onnx")
    with runner:
        assert runner.output_names() == ["y", "s"]


def test_runner_infers_repeatedly_through_one_binding(tmp_path: Path) -> None:
    runner = OrtRunner(SessionFromOnnx(affine_model(tmp_path / "m.onnx")))
    with runner:
        binding = runner._binding
        for rows in (1, 4, 2):
            x = np.arange(rows * 3, dtype=np.float32).reshape(rows, 3)
            out = runner.infer({"x": x})
            assert list(out) == ["y", "s"]
            np.testing.assert_array_equal(out["y"], 2 * x + 1)
            assert float(out["s"]) == float(x.sum())
            assert runner._binding is binding
        assert runner.last_inference_time() is not None
    assert runner.session is None and not runner.is_active


def test_runner_refuses_inputs_of_the_wrong_type(tmp_path: Path) -> None:
    """The runner's input metadata (ONNX Runtime's types as Polygraphy's) names the input and both types."""
    with OrtRunner(SessionFromOnnx(affine_model(tmp_path / "m.onnx"))) as runner:
        with pytest.raises(
            PolygraphyException, match=r"(?s)Input tensor: x \| Received unexpected dtype: int64.*float32"
        ):
            runner.infer({"x": np.zeros((2, 3), dtype=np.int64)})
        np.testing.assert_array_equal(runner.infer({"x": np.ones((1, 3), dtype=np.float32)})["y"], np.full((1, 3), 3.0))


def test_session_options_and_model_bytes(tmp_path: Path) -> None:
    options = SessionOptionsLoader(threads=1, graph_optimization="basic")()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    data = affine_model(tmp_path / "m.onnx").read_bytes()
    with OrtRunner(SessionFromOnnx(data, options=SessionOptionsLoader(threads=1))) as runner:
        assert runner.session is not None
        assert runner.session.get_providers() == ["CPUExecutionProvider"]


def test_polygraphy_comparator_takes_the_runner(tmp_path: Path) -> None:
    """Our runner beside Polygraphy's own ONNX Runtime runner: equal on one file, told apart on another."""
    from polygraphy.backend.onnxrt import OnnxrtRunner
    from polygraphy.backend.onnxrt import SessionFromOnnx as PolygraphySession

    path = affine_model(tmp_path / "m.onnx")
    feeds = [{"x": np.arange(6, dtype=np.float32).reshape(2, 3)}]
    theirs = OnnxrtRunner(PolygraphySession(str(path)), name="polygraphy")
    same = Comparator.run([OrtRunner(SessionFromOnnx(path), name="ours"), theirs], data_loader=feeds)
    assert bool(Comparator.compare_accuracy(same))
    np.testing.assert_array_equal(same["ours"][0]["y"], 2 * feeds[0]["x"] + 1)
    shifted = OrtRunner(SessionFromOnnx(affine_model(tmp_path / "shifted.onnx", offset=1.5)), name="shifted")
    differ = Comparator.run([shifted, theirs], data_loader=feeds)
    assert not bool(Comparator.compare_accuracy(differ))


def test_cpu_is_always_there_and_missing_gpus_say_what_to_install() -> None:
    assert "cpu" in available_devices()
    assert execution_providers("cpu") == ["CPUExecutionProvider"]
    for device in ("cuda", "tensorrt"):
        if device in available_devices():
            assert execution_providers(device)[0] == DEVICE_PROVIDERS[device][0]
        else:
            with pytest.raises(MissingDependencyError, match=r"ftp-deploy\[gpu\]"):
                execution_providers(device)
    with pytest.raises(MissingDependencyError, match="unknown device"):
        execution_providers("tpu")
