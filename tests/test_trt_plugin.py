"""The TensorRT plugin: its shape and grid formulas and its PTX here; engines where TensorRT runs."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import types
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from ftp_deploy.plugins.token_compaction.contract import kept_count
from ftp_deploy.plugins.token_compaction.geometry import LaunchConfig, kept_count_expr, programs_per_row
from ftp_deploy.plugins.token_compaction.trt_plugin import register_trt_plugins

HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
HAS_TRITON = importlib.util.find_spec("triton") is not None


class LeftOnlyDim:
    """A dimension with `+ - * //` taking an int on the right only, like tensorrt.plugin.ShapeExpr."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __add__(self, other: int) -> LeftOnlyDim:
        return LeftOnlyDim(self.value + other)

    def __sub__(self, other: LeftOnlyDim) -> LeftOnlyDim:
        return LeftOnlyDim(self.value - other.value)

    def __mul__(self, other: int) -> LeftOnlyDim:
        return LeftOnlyDim(self.value * other)

    def __floordiv__(self, other: int) -> LeftOnlyDim:
        return LeftOnlyDim(self.value // other)


SPARSITIES = [(0, 1000), (1, 1000), (250, 1000), (300, 1000), (333, 1000), (500, 1000), (999, 1000), (2, 3), (5, 16)]


@pytest.mark.parametrize(("num", "den"), SPARSITIES)
def test_kept_count_expr_matches_contract(num: int, den: int) -> None:
    for seq_len in range(0, 9000):
        assert kept_count_expr(seq_len, num, den) == kept_count(seq_len, num, den)


@pytest.mark.parametrize(("num", "den"), SPARSITIES)
def test_kept_count_expr_needs_no_reflected_operators(num: int, den: int) -> None:
    for seq_len in (1, 7, 2048, 6000, 8192, 32768):
        assert kept_count_expr(LeftOnlyDim(seq_len), num, den).value == kept_count(seq_len, num, den)


class FakePluginApi:
    """What register_trt_plugins calls in `tensorrt.plugin` (before 10.9: no aot_impl); keeps the functions."""

    # Read as annotations when the plugin functions are defined.
    Tensor = TensorDesc = AutoTuneCombination = object

    def __init__(self) -> None:
        self.descriptors: dict[str, Any] = {}

    def register(self, plugin_id: str) -> Any:
        def keep(function: Any) -> Any:
            self.descriptors[plugin_id] = function
            return function

        return keep

    def autotune(self, plugin_id: str) -> Any:
        return lambda function: function

    impl = autotune

    @staticmethod
    def from_shape_expr(shape: tuple[Any, ...], dtype: str) -> tuple[tuple[Any, ...], str]:
        return shape, dtype


@dataclass
class FakeDesc:
    shape_expr: tuple[LeftOnlyDim, ...]
    dtype: str

    def like(self) -> FakeDesc:
        return FakeDesc(self.shape_expr, self.dtype)


def registered_descriptors(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    api = FakePluginApi()
    trt = types.ModuleType("tensorrt")
    for name in ("float32", "float16", "bfloat16", "int64"):
        setattr(trt, name, name)
    trt.plugin = api  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", api)
    register_trt_plugins.__wrapped__()  # past functools.cache: this registration is the stand-in's
    return api.descriptors


@pytest.mark.parametrize(("num", "den"), SPARSITIES)
def test_plugin_output_shapes_follow_the_contract(monkeypatch: pytest.MonkeyPatch, num: int, den: int) -> None:
    """The shape functions TensorRT calls, on dimensions with its ShapeExpr's operators only."""
    descriptors = registered_descriptors(monkeypatch)
    assert set(descriptors) == {"ftp::TokenCompact", "ftp::TokenScatter"}
    for seq_len in (1, 7, 2048, 6000):
        hidden = FakeDesc((LeftOnlyDim(3), LeftOnlyDim(seq_len), LeftOnlyDim(64)), "float16")
        scores = FakeDesc(hidden.shape_expr[:2], "float32")
        (compact_shape, compact_type), (indices_shape, indices_type) = descriptors["ftp::TokenCompact"](
            hidden, scores, sparsity_num=num, sparsity_den=den
        )
        kept = kept_count(seq_len, num, den)
        assert [d.value for d in compact_shape] == [3, kept, 64] and compact_type == "float16"
        assert [d.value for d in indices_shape] == [3, kept] and indices_type == "int64"
        updated = FakeDesc(compact_shape, "float16")
        indices = FakeDesc(indices_shape, "int64")
        assert descriptors["ftp::TokenScatter"](hidden, updated, indices) == hidden


def test_kept_count_expr_rejects_sparsity_out_of_range() -> None:
    with pytest.raises(ValueError, match="sparsity_num"):
        kept_count_expr(LeftOnlyDim(10), 1000, 1000)
    with pytest.raises(ValueError, match="sparsity_num"):
        kept_count_expr(10, -1, 1000)


@pytest.mark.parametrize("rows", [1, 64, 1024])
def test_programs_per_row_is_ceil_division(rows: int) -> None:
    for seq_len in range(0, 5000, 7):
        assert programs_per_row(seq_len, rows) == -(-seq_len // rows)
        assert programs_per_row(LeftOnlyDim(seq_len), rows).value == -(-seq_len // rows)


@pytest.mark.parametrize(
    "bad", [{"rows": 48}, {"select_block": 0}, {"block_d": 100}, {"num_warps": 3}, {"radix_bits": 5}]
)
def test_launch_config_rejects_shapes_triton_cannot_take(bad: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="LaunchConfig"):
        LaunchConfig(**bad)


@pytest.mark.skipif(HAS_TENSORRT, reason="tensorrt is installed")
def test_register_without_tensorrt_names_the_extra() -> None:
    with pytest.raises(ImportError, match=r"pip install 'ftp-deploy\[trt\]'"):
        register_trt_plugins()


# Compiles in a fresh process: another test module may have imported the kernels under Triton's
# CPU interpreter in this one, and interpreted kernels cannot be compiled.
_COMPILE_AND_LIST_PARAMS = """
import json, re, sys
from triton.backends.compiler import GPUTarget
from ftp_deploy.plugins.token_compaction.aot import compile_kernel, declared_ptx_version
out = []
for op, hidden_type, aligned in json.loads(sys.argv[1]):
    k = compile_kernel(op, hidden_type, aligned, GPUTarget("cuda", 90, 32), 90)
    entry = re.search(r"\\.entry (\\w+)\\(([^)]*)\\)", k.ptx)
    params = [("ptr" if ".ptr" in p else p.split()[1].lstrip(".")) for p in entry[2].split(",")]
    path = f"{sys.argv[2]}/{op}_{hidden_type}_{aligned}.ptx"
    open(path, "w").write(k.ptx)
    out.append([op, hidden_type, aligned, k.name, entry[1], params, declared_ptx_version(k.ptx), k.threads, path])
print(json.dumps(out))
"""

CASES = [("compact", "bf16", True), ("scatter", "fp16", False)]
ALL_CASES = [(op, t, a) for op in ("compact", "scatter") for t in ("fp32", "fp16", "bf16") for a in (True, False)]


def compile_in_subprocess(cases: list[tuple[str, str, bool]], tmp_path: Path) -> list[list[Any]]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", _COMPILE_AND_LIST_PARAMS, json.dumps(cases), str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    compiled: list[list[Any]] = json.loads(result.stdout)
    return compiled


def cuda13_ptxas() -> str | None:
    """The CUDA toolkit's ptxas if it reads PTX ISA 9.0 (CUDA >= 13), else None."""
    ptxas = shutil.which("ptxas")
    if ptxas is None:
        return None
    version = subprocess.run([ptxas, "--version"], capture_output=True, text=True).stdout
    release = re.search(r"release (\d+)\.", version)
    return ptxas if release and int(release[1]) >= 13 else None


def check_compiled(compiled: list[list[Any]]) -> None:
    # TensorRT's AOT call: input pointers, the extra int32 args (T, K, D), output pointers;
    # Triton's own scratch pointers may follow and go unused.
    expected = {
        "compact": ["ptr", "ptr", "u32", "u32", "u32", "ptr", "ptr"],
        "scatter": ["ptr"] * 3 + ["u32"] * 3 + ["ptr"],
    }
    for op, _, _, name, entry, params, ptx_version, threads, _ in compiled:
        assert entry == name == f"token_{op}_kernel"
        assert params[:7] == expected[op]
        assert all(p == "ptr" for p in params[7:])
        assert ptx_version == 90
        assert threads == LaunchConfig().num_warps * 32


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_aot_kernels_compile_to_ptx_with_tensorrt_parameter_order(tmp_path: Path) -> None:
    check_compiled(compile_in_subprocess(CASES, tmp_path))


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_the_ptx_assembles_for_sm_90a(tmp_path: Path) -> None:
    """The CUDA toolkit's own assembler takes the PTX TensorRT would hand the driver (ISA 9.0, sm_90a)."""
    ptxas = cuda13_ptxas()
    if ptxas is None:
        pytest.skip("no ptxas of CUDA >= 13 on PATH: the PTX was compiled but not assembled")
    for *_, path in compile_in_subprocess(CASES, tmp_path):
        subprocess.run([ptxas, "-arch=sm_90a", str(path), "-o", os.devnull], check=True, capture_output=True)


class ConstantDim(LeftOnlyDim):
    """A build-time constant dimension, as TensorRT's ShapeExpr describes one to an AOT implementation."""

    is_constant = True

    @property
    def constant_value(self) -> int:
        return self.value


class FakeAotPluginApi(FakePluginApi):
    """`tensorrt.plugin` of TensorRT >= 10.9: `aot_impl` too, and the launch types its answers are made of."""

    def __init__(self) -> None:
        super().__init__()
        self.aot: dict[str, Any] = {}

    def aot_impl(self, plugin_id: str) -> Any:
        def keep(function: Any) -> Any:
            self.aot[plugin_id] = function
            return function

        return keep

    KernelLaunchParams = types.SimpleNamespace

    @staticmethod
    def SymInt32(expr: Any) -> Any:  # TensorRT's name
        return ("int32", expr.value)

    class SymIntExprs:
        @staticmethod
        def from_tuple(values: tuple[Any, ...]) -> list[Any]:
            return list(values)


# Runs in a fresh process (kernels imported under Triton's CPU interpreter elsewhere cannot compile):
# the AOT implementations TensorRT's builder prefers, called as it calls them, on the stand-in API.
_AOT_ANSWERS = """
import functools, json, sys, types
from triton.backends.compiler import GPUTarget
from ftp_deploy.plugins.token_compaction import aot
from ftp_deploy.plugins.token_compaction.trt_plugin import COMPACT_ID, SCATTER_ID, register_trt_plugins
from tests.test_trt_plugin import ConstantDim, FakeAotPluginApi, FakeDesc

api = FakeAotPluginApi()
trt = types.ModuleType("tensorrt")
for name in ("float32", "float16", "bfloat16", "int64"):
    setattr(trt, name, name)
trt.plugin = api
sys.modules["tensorrt"], sys.modules["tensorrt.plugin"] = trt, api
aot.compile_kernel = functools.partial(aot.compile_kernel, target=GPUTarget("cuda", 90, 32), ptx_version=90)
register_trt_plugins()
batch, seq_len, kept, dim = ConstantDim(2), ConstantDim(2048), ConstantDim(1434), ConstantDim(576)
hidden = FakeDesc((batch, seq_len, dim), "bfloat16")
compact = (FakeDesc((batch, kept, dim), "bfloat16"), FakeDesc((batch, kept), "int64"))
answers = {
    "compact": api.aot[COMPACT_ID](hidden, FakeDesc((batch, seq_len), "float32"), 300, 1000, compact, 0),
    "scatter": api.aot[SCATTER_ID](hidden, compact[0], compact[1], (hidden,), 0),
}
out = {}
for op, (name, ptx, launch, extra) in answers.items():
    out[op] = {"name": name, "entry": f".entry {name}(" in ptx, "grid": [launch.grid_x.value, launch.grid_y.value],
               "block": launch.block_x, "shared": launch.shared_mem, "extra": extra}
print(json.dumps(out))
"""


@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_the_aot_implementations_answer_tensorrt_with_kernel_grid_and_arguments() -> None:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-c", _AOT_ANSWERS], capture_output=True, text=True, env=env, check=False, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    answers = json.loads(result.stdout.splitlines()[-1])
    rows = LaunchConfig().rows
    for op in ("compact", "scatter"):
        answer = answers[op]
        assert answer["name"] == f"token_{op}_kernel" and answer["entry"]
        assert answer["grid"] == [-(-2048 // rows), 2]  # a program per `rows` tokens, per batch row
        assert answer["block"] == LaunchConfig().num_warps * 32 and answer["shared"] >= 0
        assert answer["extra"] == [["int32", 2048], ["int32", 1434], ["int32", 576]]  # T, K, D


@pytest.mark.slow
@pytest.mark.skipif(not HAS_TRITON, reason="triton not installed")
def test_aot_kernels_compile_for_every_type(tmp_path: Path) -> None:
    check_compiled(compile_in_subprocess(ALL_CASES, tmp_path))


def test_declared_ptx_version() -> None:
    from ftp_deploy.plugins.token_compaction.aot import declared_ptx_version

    assert declared_ptx_version("//\n.version 8.7\n.target sm_90a\n") == 87
    with pytest.raises(ValueError, match="version"):
        declared_ptx_version(".target sm_90a\n")


def tensorrt_with_gpu() -> tuple[Any, Any]:
    if not HAS_TENSORRT:
        pytest.skip("tensorrt not installed")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA GPU")
    import tensorrt
    import tensorrt.plugin

    return tensorrt, tensorrt.plugin


@pytest.mark.trt
@pytest.mark.parametrize("aot", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_engine_matches_reference(aot: bool, dtype: torch.dtype) -> None:
    """compact -> x + x (exact) -> scatter through a built engine equals the reference bit for bit."""
    trt, trtp = tensorrt_with_gpu()
    from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, TrtRunner, create_network

    from ftp_deploy.plugins.token_compaction.reference import token_compact, token_scatter

    register_trt_plugins()
    batch, seq_len, dim, num = 2, 6000, 64, 300  # K = 4200, past TensorRT TopK's 3840
    trt_type = {torch.float32: trt.float32, torch.float16: trt.float16, torch.bfloat16: trt.bfloat16}[dtype]
    builder, network = create_network(strongly_typed=True)
    hidden_in = network.add_input("hidden", trt_type, (batch, seq_len, dim))
    scores_in = network.add_input("scores", trt.float32, (batch, seq_len))
    compact_layer = network.add_plugin(
        trtp.op.ftp.TokenCompact(hidden_in, scores_in, sparsity_num=num, sparsity_den=1000),
        aot=aot,
    )
    compact, indices = compact_layer.get_output(0), compact_layer.get_output(1)
    doubled = network.add_elementwise(compact, compact, trt.ElementWiseOperation.SUM).get_output(0)
    scatter_layer = network.add_plugin(trtp.op.ftp.TokenScatter(hidden_in, doubled, indices), aot=aot)
    for name, tensor in (("compact", compact), ("indices", indices), ("out", scatter_layer.get_output(0))):
        tensor.name = name
        network.mark_output(tensor)

    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(batch, seq_len, dim, generator=gen).to(dtype)
    scores = torch.randint(0, 50, (batch, seq_len), generator=gen).float()  # ties in every row
    with TrtRunner(EngineFromNetwork((builder, network), CreateConfig())) as runner:
        got = runner.infer({"hidden": hidden.cuda(), "scores": scores.cuda()})

    want_compact, want_indices = token_compact(hidden, scores, num)
    assert torch.equal(got["indices"].cpu(), want_indices)
    assert torch.equal(got["compact"].cpu(), want_compact)
    assert torch.equal(got["out"].cpu(), token_scatter(hidden, want_compact + want_compact, want_indices))
