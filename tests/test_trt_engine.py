"""TensorRT export and runtime: what runs without TensorRT here, the engine itself where TensorRT and a GPU exist.

Here (no TensorRT, no GPU): the optimization profile, the plan-manifest compatibility and shape
checks, `export --engine trt --onnx-only` on a tiny model (one export, shared by the module), and
the refusals with one clear line. The engine build, the plugin numerics and the engine's parity
with ONNX Runtime and PyTorch are skipped, naming the missing piece.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import types
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
import torch

from ftp_deploy import cli
from ftp_deploy.engines import trt_runner
from ftp_deploy.engines.build_plan import build_artifact_plan
from ftp_deploy.engines.trt_env import default_timing_cache, require_tensorrt_gpu
from ftp_deploy.engines.trt_plan import (
    BUILD_SCRIPT,
    check_plan_compatible,
    onnx_plugin_ids,
    plugin_node_count,
    read_plan_manifest,
    write_plan_manifest,
)
from ftp_deploy.engines.trt_profile import DEFAULT_PROFILE, ShapeProfile, check_shapes_in_profile, parse_shape
from ftp_deploy.errors import (
    ArtifactError,
    EngineLoadError,
    MissingDependencyError,
    PlanCompatibilityError,
    PluginMissingError,
    ShapeOutOfProfileError,
    UsageError,
)
from ftp_deploy.exporters.trt_export import TRTEXEC_INPUTS
from ftp_deploy.fileio import sha256_file
from ftp_deploy.formats.export_manifest import DATA_FILE, MANIFEST_FILE, MODEL_FILE, manifest_mismatches, read_manifest
from ftp_deploy.formats.plan_manifest import (
    PLAN_FILE,
    PLAN_MANIFEST_FILE,
    PlanHashes,
    PlanManifest,
    PluginId,
    ProfileRecord,
    TrtEnvironment,
)
from ftp_deploy.formats.record import from_json, to_json
from ftp_deploy.verification.verify import verify
from tests.conftest import VOCAB
from tests.test_export_command import make_run
from tests.test_onnx_export import assert_contract_nodes
from tests.test_onnx_functions import pair_model, reference_pair
from tests.test_trt_plugin import tensorrt_with_gpu


def _trt_gpu_problem() -> str | None:
    try:
        require_tensorrt_gpu("probe")
    except MissingDependencyError as err:
        return str(err)
    return None


NO_TRT_GPU = _trt_gpu_problem()
needs_no_trt_gpu = pytest.mark.skipif(NO_TRT_GPU is None, reason="tensorrt and a CUDA GPU are present")
PROFILE = ShapeProfile(min_shape=(1, 1), opt_shape=(2, 64), max_shape=(4, 256))
H100 = TrtEnvironment("10.13.0.35", "NVIDIA H100 80GB HBM3", (9, 0))
PLUGINS = (PluginId("ftp", "TokenCompact", "1"), PluginId("ftp", "TokenScatter", "1"))


def plan_manifest(environment: TrtEnvironment = H100) -> PlanManifest:
    return PlanManifest(environment, PROFILE.record(), "fp16", PLUGINS, "aot", PlanHashes("a" * 64, "b" * 64))


def with_plan_hash(manifest: PlanManifest, plan: Path, **changes: object) -> PlanManifest:
    return replace(manifest, sha256=replace(manifest.sha256, plan=sha256_file(plan)), **changes)  # type: ignore[arg-type]


# --- the optimization profile -------------------------------------------------------------------


def test_shape_strings_parse_as_batch_and_sequence() -> None:
    assert parse_shape("1,512", "--opt-shape") == (1, 512)
    assert parse_shape(" 4 , 2048 ", "--max-shape") == (4, 2048)


@pytest.mark.parametrize("text", ["1x512", "512", "1,2,3", "a,b", ""])
def test_bad_shape_strings_name_the_option_and_the_text(text: str) -> None:
    with pytest.raises(UsageError, match=rf"--max-shape takes BATCH,SEQUENCE .* got {text!r}"):
        parse_shape(text, "--max-shape")


def test_default_profile() -> None:
    assert (DEFAULT_PROFILE.min_shape, DEFAULT_PROFILE.opt_shape, DEFAULT_PROFILE.max_shape) == (
        (1, 1),
        (1, 512),
        (4, 2048),
    )
    saved = json.loads(json.dumps(to_json(PROFILE.record())))
    assert ShapeProfile.from_record(from_json(ProfileRecord, saved)) == PROFILE


@pytest.mark.parametrize(
    ("shapes", "fragment"),
    [
        ({"min_shape": (0, 1)}, r"--min-shape must be two integers >= 1 .* \(0, 1\)"),
        ({"max_shape": (4, -1)}, r"--max-shape must be two integers >= 1"),
        ({"opt_shape": (8, 64)}, r"batch range must satisfy min <= opt <= max, got min 1, opt 8, max 4"),
        ({"min_shape": (1, 128)}, r"sequence range must satisfy min <= opt <= max, got min 128, opt 64, max 256"),
        ({"max_shape": (4, 32)}, r"sequence range .* got min 1, opt 64, max 32 .*--max-shape 4,32"),
    ],
)
def test_profile_must_be_ordered_and_positive(shapes: dict[str, tuple[int, int]], fragment: str) -> None:
    with pytest.raises(UsageError, match=fragment):
        replace(PROFILE, **shapes)


def test_shapes_inside_the_profile_pass_at_its_edges() -> None:
    check_shapes_in_profile({"input_ids": (1, 1), "attention_mask": (4, 256)}, PROFILE)
    check_shapes_in_profile({"hidden": (2, 64, 48)}, PROFILE)  # trailing axes are not the profile's


@pytest.mark.parametrize(
    ("name", "shape", "shown"),
    [
        ("input_ids", (1, 257), "1x257"),
        ("attention_mask", (5, 8), "5x8"),
        ("input_ids", (0, 8), "0x8"),
        ("x", (8,), "8"),
    ],
)
def test_shapes_outside_the_profile_name_input_shape_and_range(name: str, shape: tuple[int, ...], shown: str) -> None:
    with pytest.raises(ShapeOutOfProfileError) as caught:
        check_shapes_in_profile({name: shape}, PROFILE)
    message = str(caught.value)
    assert f"{name} has shape {shown}" in message
    assert "batch 1..4, sequence 1..256" in message and "--max-shape" in message


# --- the plan manifest and its compatibility check -----------------------------------------------


def test_plan_manifest_round_trips(tmp_path: Path) -> None:
    write_plan_manifest(tmp_path, plan_manifest())
    assert read_plan_manifest(tmp_path) == plan_manifest()
    data = json.loads((tmp_path / PLAN_MANIFEST_FILE).read_text())
    assert data["environment"] == {
        "tensorrt": "10.13.0.35",
        "gpu": "NVIDIA H100 80GB HBM3",
        "compute_capability": [9, 0],
    }
    assert data["plugins"][0] == {"namespace": "ftp", "name": "TokenCompact", "version": "1"}
    assert data["sha256"] == {"plan": "a" * 64, "onnx": "b" * 64}


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "has no model.plan.json"),
        ("{not json", "is not valid JSON"),
        ('{"format": "other"}', "is not an ftp-deploy TensorRT plan manifest"),
        ('{"format": "ftp-deploy/tensorrt-plan", "format_version": 9}', "format version 9"),
        ('{"format": "ftp-deploy/tensorrt-plan", "format_version": 1}', "incomplete or malformed"),
    ],
)
def test_bad_plan_manifests_are_artifact_errors(tmp_path: Path, content: str | None, fragment: str) -> None:
    if content is not None:
        (tmp_path / PLAN_MANIFEST_FILE).write_text(content)
    with pytest.raises(ArtifactError, match=fragment):
        read_plan_manifest(tmp_path)


def test_same_release_and_gpu_is_compatible() -> None:
    check_plan_compatible(plan_manifest(), H100)
    check_plan_compatible(plan_manifest(), replace(H100, tensorrt="10.13.0.99"))  # another build number


@pytest.mark.parametrize(
    ("here", "named"),
    [
        (replace(H100, tensorrt="11.0.1"), "TensorRT version"),
        (replace(H100, tensorrt="10.14.0"), "TensorRT version"),
        (replace(H100, gpu="NVIDIA H100 PCIe"), "GPU"),
        (TrtEnvironment("10.13.0", "NVIDIA H100 80GB HBM3", (8, 9)), "compute capability"),
        (TrtEnvironment("11.0.1", "NVIDIA A10", (8, 6)), "TensorRT version, GPU, compute capability"),
    ],
)
def test_an_incompatible_plan_says_what_differs(here: TrtEnvironment, named: str) -> None:
    with pytest.raises(PlanCompatibilityError) as caught:
        check_plan_compatible(plan_manifest(), here, Path("art"))
    message = str(caught.value)
    assert message.startswith(
        "art/model.plan was built with TensorRT 10.13.0.35 for NVIDIA H100 80GB HBM3 (sm_90); "
        f"this machine has TensorRT {here.tensorrt} and {here.gpu} ({here.sm})"
    )
    assert f"(a different {named})" in message
    assert "ftp-deploy build-plan art" in message and "ftp-deploy export --engine trt" in message


def test_timing_cache_is_per_tensorrt_and_gpu(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = default_timing_cache(H100)
    assert path == tmp_path / "ftp-deploy" / "tensorrt" / "timing-10.13.0.35-sm_90-NVIDIA-H100-80GB-HBM3.cache"
    assert default_timing_cache(replace(H100, tensorrt="11.0.1")) != path


def test_plugin_ids_come_from_the_nodes_that_name_a_namespace(tmp_path: Path) -> None:
    onnx.save(pair_model(300), tmp_path / "pair.onnx")
    assert onnx_plugin_ids(tmp_path / "pair.onnx") == list(PLUGINS)
    assert plugin_node_count(tmp_path / "pair.onnx") == 2


# --- what needs TensorRT and a GPU refuses cleanly without them ------------------------------------


@needs_no_trt_gpu
def test_missing_pieces_are_named(monkeypatch: pytest.MonkeyPatch) -> None:
    assert NO_TRT_GPU is not None and "pip install 'ftp-deploy[trt]'" in NO_TRT_GPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError(name="tensorrt")
    with pytest.raises(MissingDependencyError) as caught:
        require_tensorrt_gpu("--engine trt", hint=", or pass --onnx-only")
    assert "missing here: tensorrt is not installed." in str(caught.value)
    assert str(caught.value).endswith("pip install 'ftp-deploy[trt]', or pass --onnx-only")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setitem(sys.modules, "tensorrt", types.ModuleType("tensorrt"))
    with pytest.raises(MissingDependencyError, match=r"missing here: no CUDA GPU \(torch [^;]*\)\. On a machine"):
        require_tensorrt_gpu("--runtime trt")


@dataclass
class FakeRegistry:
    registered: set[tuple[str, str, str]]

    def get_creator(self, name: str, version: str, namespace: str) -> object | None:
        return object() if (name, version, namespace) in self.registered else None


def fake_tensorrt(registered: set[tuple[str, str, str]]) -> Any:
    """Just what EngineFromPlan touches once its checks pass: a runtime that cannot deserialize."""
    runtime = types.SimpleNamespace(deserialize_cuda_engine=lambda data: None)
    return types.SimpleNamespace(Runtime=lambda logger: runtime, get_plugin_registry=lambda: FakeRegistry(registered))


@pytest.fixture
def fake_plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A folder with a plan and its manifest, and EngineFromPlan on a stand-in TensorRT on an H100."""
    (tmp_path / PLAN_FILE).write_bytes(b"plan")
    write_plan_manifest(tmp_path, with_plan_hash(plan_manifest(), tmp_path / PLAN_FILE))
    monkeypatch.setattr(trt_runner, "current_environment", lambda trt: H100)
    monkeypatch.setattr(trt_runner, "register_trt_plugins", lambda: None)
    monkeypatch.setattr(trt_runner, "error_logger", lambda trt: types.SimpleNamespace(errors=["bad magic"]))
    monkeypatch.setattr(trt_runner, "require_tensorrt_gpu", lambda purpose: fake_tensorrt(set()))
    yield tmp_path


def test_engine_loader_checks_the_manifest_before_tensorrt_reads_the_plan(
    fake_plan: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def never(data: bytes) -> None:
        raise AssertionError("TensorRT was asked to deserialize")

    trt = types.SimpleNamespace(Runtime=lambda logger: types.SimpleNamespace(deserialize_cuda_engine=never))
    monkeypatch.setattr(trt_runner, "require_tensorrt_gpu", lambda purpose: trt)
    monkeypatch.setattr(trt_runner, "current_environment", lambda _: TrtEnvironment("11.0.1", "NVIDIA A10", (8, 6)))
    with pytest.raises(PlanCompatibilityError, match=r"sm_90\); this machine has TensorRT 11.0.1 and NVIDIA A10"):
        trt_runner.EngineFromPlan(fake_plan)()
    monkeypatch.setattr(trt_runner, "current_environment", lambda _: H100)
    (fake_plan / PLAN_FILE).write_bytes(b"other plan")
    with pytest.raises(ArtifactError, match="does not match the sha256"):
        trt_runner.EngineFromPlan(fake_plan)()


def test_engine_loader_names_unregistered_plugins(fake_plan: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(PluginMissingError, match=r"ftp::TokenCompact \(version 1\), ftp::TokenScatter \(version 1\)"):
        trt_runner.EngineFromPlan(fake_plan)()
    registered = {("TokenCompact", "1", "ftp"), ("TokenScatter", "1", "ftp")}
    monkeypatch.setattr(trt_runner, "require_tensorrt_gpu", lambda purpose: fake_tensorrt(registered))
    with pytest.raises(EngineLoadError, match=r"could not deserialize .*model\.plan: bad magic"):
        trt_runner.EngineFromPlan(fake_plan)()


# --- export --engine trt --onnx-only on a tiny model (the module's one export) ---------------------


@dataclass
class OnnxOnlyExport:
    run: Path
    out: Path
    code: int
    stdout: str
    stderr: str


@pytest.fixture(scope="module")
def onnx_only(tmp_path_factory: pytest.TempPathFactory) -> OnnxOnlyExport:
    folder = tmp_path_factory.mktemp("trt")
    run, out = make_run(folder), folder / "my art"  # a space, so quoting matters
    stdout, stderr = io.StringIO(), io.StringIO()
    args = ["export", str(run), "--out", str(out), "--engine", "trt", "--onnx-only", "--last-token-logits"]
    args += ["--min-shape", "1,1", "--opt-shape", "2,64", "--max-shape", "4,256"]
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        code = cli.main(args)
    return OnnxOnlyExport(run, out, code, stdout.getvalue(), stderr.getvalue())


def test_onnx_only_artifact_is_complete_and_hash_consistent(onnx_only: OnnxOnlyExport) -> None:
    assert onnx_only.code == 0, onnx_only.stderr
    files = {MODEL_FILE, DATA_FILE, MANIFEST_FILE, BUILD_SCRIPT, *TRTEXEC_INPUTS.values()}
    assert {p.name for p in onnx_only.out.iterdir()} == files  # no plan: TensorRT is not asked
    assert manifest_mismatches(onnx_only.out) == []
    assert set(read_manifest(onnx_only.out).files) == files - {MANIFEST_FILE}
    assert not any(p.name.startswith(".") for p in onnx_only.out.parent.iterdir())  # no staging left over


def test_onnx_only_manifest_has_the_tensorrt_section(onnx_only: OnnxOnlyExport) -> None:
    manifest = read_manifest(onnx_only.out)
    assert manifest.engine == "trt" and manifest.dtype == "fp32"
    assert manifest.tensorrt is not None and to_json(manifest.tensorrt) == {
        "profile": {"inputs": ["input_ids", "attention_mask"], "min": [1, 1], "opt": [2, 64], "max": [4, 256]},
        "dtype": "fp32",
        "strongly_typed": True,
        "plugins": [to_json(p) for p in PLUGINS],
        "build_script": BUILD_SCRIPT,
        "plan_file": None,
        "plan_manifest": None,
        "built_for": None,
        "decode_profile": None,
    }


def test_the_exported_file_is_tensorrt_ready(onnx_only: OnnxOnlyExport) -> None:
    """Every ftp node names plugin_namespace and plugin_version (what the parser looks the plugin up by)."""
    assert_contract_nodes(onnx_only.out / MODEL_FILE, num_layers=2)
    assert onnx_plugin_ids(onnx_only.out / MODEL_FILE) == list(PLUGINS)


def test_build_script_builds_in_python_then_times_with_trtexec(onnx_only: OnnxOnlyExport) -> None:
    script = (onnx_only.out / BUILD_SCRIPT).read_text()
    subprocess.run(["sh", "-n", str(onnx_only.out / BUILD_SCRIPT)], check=True)
    lines = script.splitlines()
    build = lines.index("ftp-deploy build-plan .")
    trtexec = next(i for i, line in enumerate(lines) if line.strip().startswith("trtexec "))
    assert lines.index('cd "$(dirname "$0")"') < build < trtexec
    assert shlex.split(lines[trtexec]) == [
        "trtexec",
        "--loadEngine=model.plan",
        "--shapes=input_ids:2x64,attention_mask:2x64",
        "--loadInputs=input_ids:trtexec_input_ids.bin,attention_mask:trtexec_attention_mask.bin",
    ]
    assert "trtexec loads plugins only from shared libraries" in script and "Python plugins" in script


def test_trtexec_inputs_are_valid_tokens_at_the_opt_shape(onnx_only: OnnxOnlyExport) -> None:
    ids = np.fromfile(onnx_only.out / TRTEXEC_INPUTS["input_ids"], dtype="<i8")
    mask = np.fromfile(onnx_only.out / TRTEXEC_INPUTS["attention_mask"], dtype="<i8")
    assert ids.size == mask.size == 2 * 64
    assert ids.min() >= 0 and ids.max() < VOCAB and (mask == 1).all()


def test_onnx_only_prints_the_commands_quoted(onnx_only: OnnxOnlyExport) -> None:
    out = onnx_only.out.resolve()
    assert f"ftp-deploy build-plan {shlex.quote(str(out))}" in onnx_only.stdout
    assert f"cd {shlex.quote(str(out))} && trtexec --loadEngine=model.plan" in onnx_only.stdout
    assert "trtexec cannot build it" in onnx_only.stdout


@needs_no_trt_gpu
def test_build_script_fails_cleanly_without_tensorrt(onnx_only: OnnxOnlyExport, tmp_path: Path) -> None:
    before = read_manifest(onnx_only.out)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(
        ["sh", str(onnx_only.out / BUILD_SCRIPT)], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.startswith("error: building a TensorRT engine needs TensorRT and a CUDA GPU")
    assert "Traceback" not in result.stderr and "trtexec" not in result.stdout
    assert read_manifest(onnx_only.out) == before and manifest_mismatches(onnx_only.out) == []


@needs_no_trt_gpu
def test_verify_trt_without_tensorrt_is_one_line(onnx_only: OnnxOnlyExport) -> None:
    with pytest.raises(MissingDependencyError, match=r"--runtime trt needs TensorRT and a CUDA GPU"):
        verify(onnx_only.out, runtime="trt")


def test_verify_trt_without_a_plan_says_how_to_build_it(
    onnx_only: OnnxOnlyExport, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ftp_deploy.verification import verify as verify_module

    monkeypatch.setattr(verify_module, "require_tensorrt_gpu", lambda purpose: None)
    with pytest.raises(ArtifactError) as caught:
        verify(onnx_only.out, runtime="trt")
    assert "has no TensorRT plan (model.plan)" in str(caught.value)
    assert f"ftp-deploy build-plan {shlex.quote(str(onnx_only.out))}" in str(caught.value)


@needs_no_trt_gpu
def test_build_plan_without_tensorrt_names_the_extra(
    onnx_only: OnnxOnlyExport, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["build-plan", str(onnx_only.out)]) == 2
    assert "pip install 'ftp-deploy[trt]'" in capsys.readouterr().err


def test_target_build_updates_the_artifact_in_place(
    onnx_only: OnnxOnlyExport, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """build_plan's bookkeeping around the (stand-in) TensorRT build: the manifest hashes the new files."""
    from ftp_deploy.engines import build_plan

    def stand_in_build(folder: Path, profile: ShapeProfile, dtype: str, timing_cache: Path | None) -> PlanManifest:
        (folder / PLAN_FILE).write_bytes(b"plan")
        manifest = with_plan_hash(plan_manifest(), folder / PLAN_FILE, profile=profile.record(), dtype=dtype)
        write_plan_manifest(folder, manifest)
        return manifest

    monkeypatch.setattr(build_plan, "require_tensorrt_gpu", lambda purpose: None)
    monkeypatch.setattr(build_plan, "write_plan", stand_in_build)
    art = tmp_path / "art"
    shutil.copytree(onnx_only.out, art)
    (art / PLAN_FILE).write_bytes(b"left by an interrupted build")  # not in the manifest: no obstacle
    build_artifact_plan(art)
    assert manifest_mismatches(art) == []
    manifest, exported = read_manifest(art), read_manifest(onnx_only.out)
    assert manifest.tensorrt is not None and manifest.tensorrt.plan_file == PLAN_FILE
    assert manifest.tensorrt.built_for == H100 and manifest.tensorrt.profile == PROFILE.record()
    assert manifest.validation == exported.validation
    assert set(manifest.files) == set(exported.files) | {PLAN_FILE, PLAN_MANIFEST_FILE}
    (art / MODEL_FILE).write_bytes(b"tampered")
    with pytest.raises(ArtifactError, match=r"model\.onnx does not match its sha256"):
        build_artifact_plan(art)


# --- with TensorRT and a GPU (skipped here, naming what is missing) --------------------------------


def with_static_width(model: onnx.ModelProto, width: int) -> onnx.ModelProto:
    """The pair model with its hidden width fixed: the profile covers [batch, sequence] only."""
    for value in [*model.graph.input, *model.graph.output]:
        dims = value.type.tensor_type.shape.dim
        if len(dims) == 3:
            dims[2].dim_value = width
    return model


@pytest.mark.trt
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_parsed_plugins_match_the_reference(tmp_path: Path, dtype: torch.dtype) -> None:
    """ONNX file -> parser -> plugins -> plan -> runner, exactly the reference; K = 4200 is past TopK's 3840,
    so the ONNX function bodies could not have built it."""
    tensorrt_with_gpu()
    from ftp_deploy.engines.trt_builder import write_plan

    onnx.save(with_static_width(pair_model(300, dtype), 64), tmp_path / MODEL_FILE)
    write_plan(tmp_path, ShapeProfile((1, 1), (2, 512), (2, 6000)), "fp32", tmp_path / "timing.cache")
    assert read_plan_manifest(tmp_path).plugins == PLUGINS
    gen = torch.Generator().manual_seed(0)
    hidden = torch.randn(2, 6000, 64, generator=gen).to(dtype)
    scores = torch.randint(0, 50, (2, 6000), generator=gen).float()  # ties in every row
    with trt_runner.TrtPlanRunner(trt_runner.EngineFromPlan(tmp_path)) as runner:
        got = runner.infer({"hidden": hidden.numpy(), "scores": scores.numpy()})
    for name, want in zip(("compact", "indices", "out"), reference_pair(hidden, scores, 300), strict=True):
        np.testing.assert_array_equal(got[name], want)
    assert (tmp_path / "timing.cache").stat().st_size > 0


@pytest.mark.trt
def test_tiny_model_engine_matches_onnxruntime_and_pytorch(onnx_only: OnnxOnlyExport, tmp_path: Path) -> None:
    tensorrt_with_gpu()
    from ftp_deploy.engines.onnx_runtime import OrtRunner, SessionFromOnnx
    from ftp_deploy.exporters.spec import sample_inputs

    art = tmp_path / "art"
    shutil.copytree(onnx_only.out, art)
    plan = build_artifact_plan(art, tmp_path / "timing.cache")
    assert manifest_mismatches(art) == [] and read_manifest(art).tensorrt.plan_file == PLAN_FILE
    assert plan.plugin_implementation == "aot" and plan.sha256.onnx == sha256_file(art / MODEL_FILE)
    ids, mask = (t.numpy() for t in sample_inputs(3, 100, VOCAB, seed=3))
    trt_runner_ = trt_runner.TrtPlanRunner(trt_runner.EngineFromPlan(art))
    with trt_runner_ as trt_run, OrtRunner(SessionFromOnnx(art / MODEL_FILE)) as ort_run:
        got = trt_run.infer({"input_ids": ids, "attention_mask": mask})
        want = ort_run.infer({"input_ids": ids, "attention_mask": mask})
        with pytest.raises(ShapeOutOfProfileError, match="input_ids has shape 1x300"):
            too_long = np.ones((1, 300), dtype=np.int64)
            trt_run.infer({"input_ids": too_long, "attention_mask": too_long})
    np.testing.assert_allclose(got["logits"], want["logits"], atol=1e-3, rtol=1e-3)
    result = verify(art, against=onnx_only.run, runtime="trt", seq_lens=(), report=tmp_path / "report")
    assert result.parity.passed, result.parity


@pytest.mark.trt
def test_export_with_tensorrt_writes_the_plan_into_the_artifact(onnx_only: OnnxOnlyExport, tmp_path: Path) -> None:
    """The in-export build path (export_onnx's extension), on a copy of the export rather than a second export."""
    tensorrt_with_gpu()
    from ftp_deploy.exporters.trt_export import trt_extension
    from ftp_deploy.formats.export_manifest import write_manifest
    from ftp_deploy.progress import NO_PROGRESS

    art = tmp_path / "art"
    shutil.copytree(onnx_only.out, art)
    extend = trt_extension(PROFILE, False, tmp_path / "timing.cache", NO_PROGRESS)
    manifest = write_manifest(art, extend(art, read_manifest(art)))
    assert {PLAN_FILE, PLAN_MANIFEST_FILE} <= {p.name for p in art.iterdir()}
    assert manifest.tensorrt is not None and manifest_mismatches(art) == []
    assert manifest.tensorrt.built_for is not None
    assert manifest.tensorrt.built_for.gpu == torch.cuda.get_device_name()
