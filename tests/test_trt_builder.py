"""engines/trt_builder.py's own logic on a stand-in TensorRT: network flags, the optimization
profile, and the refusal of a network where the parser inlined an ftp node's function body.

The stand-in follows the documented TensorRT Python API (Builder, OnnxParser, LayerType,
NetworkDefinitionCreationFlag). Its parser reads the real ONNX file and does what the
onnx-tensorrt importer does with an ftp node: a plugin layer where `(op, version, namespace)`
is registered, the node's local function body, one layer per node, where it is not.
"""

from __future__ import annotations

import sys
import types
from pathlib import Path
from typing import Any

import onnx
import pytest

from ftp_deploy.engines import trt_builder
from ftp_deploy.engines.trt_profile import ShapeProfile
from ftp_deploy.errors import EngineBuildError
from tests.test_onnx_functions import pair_model

PROFILE = ShapeProfile(min_shape=(1, 1), opt_shape=(2, 64), max_shape=(4, 256))
BOTH_PLUGINS = {("TokenCompact", "ftp"), ("TokenScatter", "ftp")}
HIDDEN = 8
PLUGIN_V3 = "PLUGIN_V3"


class Creation:
    STRONGLY_TYPED = 0
    PREFER_JIT_PYTHON_PLUGINS = 1
    PREFER_AOT_PYTHON_PLUGINS = 2


class CreationWithoutPreference:
    STRONGLY_TYPED = 0


class FakeLogger:
    class Severity:
        ERROR = "error"
        INTERNAL_ERROR = "internal error"

    def __init__(self) -> None:
        pass


class Tensor:
    def __init__(self, info: onnx.ValueInfoProto) -> None:
        self.name = info.name
        self.shape = tuple(d.dim_value if d.HasField("dim_value") else -1 for d in info.type.tensor_type.shape.dim)


class Network:
    def __init__(self) -> None:
        self.layers: list[types.SimpleNamespace] = []
        self.inputs: list[Tensor] = []

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    def get_layer(self, index: int) -> types.SimpleNamespace:
        return self.layers[index]

    @property
    def num_inputs(self) -> int:
        return len(self.inputs)

    def get_input(self, index: int) -> Tensor:
        return self.inputs[index]


class Parser:
    def __init__(self, network: Network, registered: set[tuple[str, str]]) -> None:
        self.network = network
        self.registered = registered
        self.num_errors = 0

    def parse_from_file(self, path: str) -> bool:
        model = onnx.load(path)
        functions = {f.name: f for f in model.functions}
        self.network.inputs = [Tensor(i) for i in model.graph.input]
        for node in model.graph.node:
            namespace = next((a.s.decode() for a in node.attribute if a.name == "plugin_namespace"), None)
            if namespace is not None and (node.op_type, namespace) in self.registered:
                self.network.layers.append(types.SimpleNamespace(type=PLUGIN_V3))
            elif node.op_type in functions:
                self.network.layers += [types.SimpleNamespace(type=n.op_type) for n in functions[node.op_type].node]
            else:
                self.network.layers.append(types.SimpleNamespace(type=node.op_type))
        return True


class Profile:
    def __init__(self, consistent: bool = True) -> None:
        self.shapes: dict[str, tuple[tuple[int, ...], ...]] = {}
        self.consistent = consistent

    def set_shape(self, name: str, low: tuple[int, ...], opt: tuple[int, ...], high: tuple[int, ...]) -> None:
        self.shapes[name] = (low, opt, high)

    def __bool__(self) -> bool:
        return self.consistent


class Config:
    def __init__(self) -> None:
        self.profiles: list[Profile] = []

    def add_optimization_profile(self, profile: Profile) -> None:
        self.profiles.append(profile)

    def create_timing_cache(self, data: bytes) -> bytes:
        return data

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        return True

    def get_timing_cache(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(serialize=lambda: b"cache")


class Builder:
    def __init__(self, consistent_profile: bool = True) -> None:
        self.flags: int | None = None
        self.config = Config()
        self.consistent_profile = consistent_profile

    def create_network(self, flags: int) -> Network:
        self.flags = flags
        return Network()

    def create_optimization_profile(self) -> Profile:
        return Profile(self.consistent_profile)

    def create_builder_config(self) -> Config:
        return self.config

    def build_serialized_network(self, network: Network, config: Config) -> bytes:
        return b"plan"


def fake_tensorrt(version: str, creation: type, registered: set[tuple[str, str]], builder: Builder) -> Any:
    return types.SimpleNamespace(
        __version__=version,
        NetworkDefinitionCreationFlag=creation,
        LayerType=types.SimpleNamespace(PLUGIN_V3=PLUGIN_V3),
        ILogger=FakeLogger,
        Builder=lambda logger: builder,
        OnnxParser=lambda network, logger: Parser(network, registered),
    )


def install(
    monkeypatch: pytest.MonkeyPatch,
    registered: set[tuple[str, str]] = BOTH_PLUGINS,
    version: str = "10.13.0",
    aot: bool = True,
    builder: Builder | None = None,
) -> Builder:
    builder = builder or Builder()
    trt = fake_tensorrt(version, Creation, registered, builder)
    plugin = types.ModuleType("tensorrt.plugin")
    if aot:
        plugin.aot_impl = lambda name: None  # type: ignore[attr-defined]
    module = types.ModuleType("tensorrt")
    module.plugin = plugin  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", module)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", plugin)
    monkeypatch.setattr(trt_builder, "require_tensorrt_gpu", lambda purpose: trt)
    monkeypatch.setattr(trt_builder, "register_trt_plugins", lambda: None)
    return builder


def pair_file(tmp_path: Path, static_hidden: bool = True) -> Path:
    """The TokenCompact -> Add -> TokenScatter model, hidden size fixed as an export's is."""
    model = pair_model(300)
    if static_hidden:
        model.graph.input[0].type.tensor_type.shape.dim[2].dim_value = HIDDEN
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    return path


def test_build_with_registered_plugins_sets_the_profile_on_every_dynamic_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    builder = install(monkeypatch)
    plan, implementation = trt_builder.build_plan(pair_file(tmp_path), PROFILE, timing_cache=tmp_path / "cache")
    assert (plan, implementation) == (b"plan", "aot")
    assert builder.flags == 1 << Creation.STRONGLY_TYPED | 1 << Creation.PREFER_AOT_PYTHON_PLUGINS
    (profile,) = builder.config.profiles
    assert profile.shapes == {
        "hidden": ((1, 1, HIDDEN), (2, 64, HIDDEN), (4, 256, HIDDEN)),
        "scores": ((1, 1), (2, 64), (4, 256)),
    }
    assert (tmp_path / "cache").read_bytes() == b"cache"


@pytest.mark.parametrize("registered", [set(), {("TokenCompact", "ftp")}])
def test_a_network_where_the_parser_inlined_an_ftp_node_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, registered: set[tuple[str, str]]
) -> None:
    install(monkeypatch, registered)
    with pytest.raises(EngineBuildError) as caught:
        trt_builder.build_plan(pair_file(tmp_path), PROFILE)
    found = len(registered)
    assert f"the file has 2 plugin nodes but TensorRT's parser made only {found} plugin layers" in str(caught.value)
    assert "inlined the other nodes' ONNX function bodies" in str(caught.value)


@pytest.mark.parametrize(
    ("version", "aot", "creation", "flags", "implementation"),
    [
        ("10.13.0", True, Creation, 1 << 0 | 1 << 2, "aot"),
        ("11.0.1", True, Creation, 1 << 2, "aot"),  # always strongly typed: no flag
        ("10.8.0", False, Creation, 1 << 0, "jit"),  # no AOT plugins before 10.9
        ("10.9.0", True, CreationWithoutPreference, 1 << 0, "jit"),
    ],
)
def test_network_flags(version: str, aot: bool, creation: type, flags: int, implementation: str) -> None:
    trt = types.SimpleNamespace(__version__=version, NetworkDefinitionCreationFlag=creation)
    trtp = types.SimpleNamespace(aot_impl=None) if aot else types.SimpleNamespace()
    assert trt_builder._network_flags(trt, trtp) == (flags, implementation)


def test_profile_refuses_an_input_with_a_dynamic_axis_past_batch_and_sequence(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    install(monkeypatch)
    with pytest.raises(EngineBuildError, match=r"input hidden has shape \(-1, -1, -1\); the profile covers inputs"):
        trt_builder.build_plan(pair_file(tmp_path, static_hidden=False), PROFILE)


def test_a_profile_tensorrt_finds_inconsistent_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    install(monkeypatch, builder=Builder(consistent_profile=False))
    with pytest.raises(EngineBuildError, match=r"TensorRT refused the profile min 1,1, opt 2,64, max 4,256"):
        trt_builder.build_plan(pair_file(tmp_path), PROFILE)
