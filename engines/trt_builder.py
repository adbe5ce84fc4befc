"""An exported ONNX file into a serialized TensorRT plan, with the ftp plugins and one optimization profile.

    plan = build_plan(folder / "model.onnx", ShapeProfile(), timing_cache=path)
    manifest = write_plan(folder, ShapeProfile(), dtype="fp16")  # model.plan + model.plan.json

The network is strongly typed (TensorRT 11 always; TensorRT 10 by flag), so the precision is the
exported file's dtype and no builder precision flag is set. The plugins are registered before
parsing, so the parser turns each `ftp` node carrying `plugin_namespace` into the plugin instead of
inlining its ONNX function body, and their AOT kernels are preferred, so the plan runs without Python.

Written against the documented TensorRT 10.6+/11 Python API (Builder, OnnxParser,
IBuilderConfig, optimization profiles, timing cache); building needs TensorRT and a GPU. The
fail-fast check for both, and everything in trt_profile.py and trt_plan.py, need neither.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftp_deploy.engines.trt_env import current_environment, default_timing_cache, error_logger, require_tensorrt_gpu
from ftp_deploy.engines.trt_plan import onnx_plugin_ids, plugin_node_count, write_plan_manifest
from ftp_deploy.engines.trt_profile import ShapeProfile, format_shape
from ftp_deploy.errors import EngineBuildError, OnnxParseError
from ftp_deploy.fileio import atomic_write_bytes, sha256_file
from ftp_deploy.formats.export_manifest import MODEL_FILE
from ftp_deploy.formats.plan_manifest import PLAN_FILE, PlanHashes, PlanManifest
from ftp_deploy.plugins.token_compaction.trt_plugin import register_trt_plugins

PURPOSE = "building a TensorRT engine"


def build_plan(model: Path, profile: ShapeProfile, timing_cache: Path | None = None) -> tuple[bytes, str]:
    """(the serialized plan, "aot" or "jit": which plugin implementation it holds).

    `timing_cache` is read if it exists and rewritten (atomically) after a successful build, so
    later builds on this machine skip the kernel timings already made. Needs TensorRT and a GPU.
    """
    trt = require_tensorrt_gpu(PURPOSE)
    register_trt_plugins()  # before the parser looks the plugins up
    import tensorrt.plugin as trtp

    logger = error_logger(trt)
    builder = trt.Builder(logger)
    flags, implementation = _network_flags(trt, trtp)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(model)):
        errors = [_parser_error(parser.get_error(i)) for i in range(parser.num_errors)]
        raise OnnxParseError(model.name, errors or logger.errors or ["the parser gave no reason"])
    _check_plugin_layers(trt, network, plugin_node_count(model))

    config = builder.create_builder_config()
    config.add_optimization_profile(_optimization_profile(builder, network, profile))
    _use_timing_cache(config, timing_cache)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        reason = "; ".join(logger.errors[-5:]) or "TensorRT logged no error"
        raise EngineBuildError(f"TensorRT could not build an engine from {model.name} ({reason})")
    if timing_cache is not None:
        atomic_write_bytes(timing_cache, bytes(config.get_timing_cache().serialize()))
    return bytes(serialized), implementation


def write_plan(folder: Path, profile: ShapeProfile, dtype: str, timing_cache: Path | None = None) -> PlanManifest:
    """Build `folder`/model.onnx into `folder`/model.plan and describe it in model.plan.json.

    The default timing cache is the user's, one per TensorRT version and GPU. Needs TensorRT and a GPU.
    """
    trt = require_tensorrt_gpu(PURPOSE)
    environment = current_environment(trt)
    model = folder / MODEL_FILE
    plan, implementation = build_plan(model, profile, timing_cache or default_timing_cache(environment))
    atomic_write_bytes(folder / PLAN_FILE, plan)
    manifest = PlanManifest(
        environment=environment,
        profile=profile.record(),
        dtype=dtype,
        plugins=tuple(onnx_plugin_ids(model)),
        plugin_implementation=implementation,
        sha256=PlanHashes(plan=sha256_file(folder / PLAN_FILE), onnx=sha256_file(model)),
    )
    write_plan_manifest(folder, manifest)
    return manifest


def _network_flags(trt: Any, trtp: Any) -> tuple[int, str]:
    creation = trt.NetworkDefinitionCreationFlag
    flags = 0
    if int(trt.__version__.split(".")[0]) < 11:  # TensorRT 11 is always strongly typed; the flag is deprecated
        flags |= 1 << int(creation.STRONGLY_TYPED)
    # register_trt_plugins defines both implementations where TensorRT has AOT plugins (>= 10.9);
    # with both defined, TensorRT refuses to pick one unless the network states a preference.
    if hasattr(trtp, "aot_impl") and hasattr(creation, "PREFER_AOT_PYTHON_PLUGINS"):
        return flags | 1 << int(creation.PREFER_AOT_PYTHON_PLUGINS), "aot"
    return flags, "jit"


def _parser_error(error: Any) -> str:
    where = error.node_name() or f"node {error.node()}"
    operator = error.node_operator()
    return f"{where}{f' ({operator})' if operator else ''}: {error.desc()}"


def _check_plugin_layers(trt: Any, network: Any, expected: int) -> None:
    """A node the parser does not make a plugin is not an error to it: it inlines the node's ONNX
    function body instead (standard ops, TopK limited to K < 3840), a slower engine that looks fine."""
    found = sum(network.get_layer(i).type == trt.LayerType.PLUGIN_V3 for i in range(network.num_layers))
    if found < expected:
        raise EngineBuildError(
            f"the file has {expected} plugin nodes but TensorRT's parser made only {found} plugin layers and "
            "inlined the other nodes' ONNX function bodies: either ftp::TokenCompact / ftp::TokenScatter are not "
            "in the plugin registry, or this TensorRT's parser prefers model-local functions over plugins "
            "(older 10.x releases do); use a recent TensorRT"
        )


def _optimization_profile(builder: Any, network: Any, profile: ShapeProfile) -> Any:
    """The profile's (batch, sequence) range on the leading axes of every dynamic input."""
    optimization = builder.create_optimization_profile()
    for index in range(network.num_inputs):
        tensor = network.get_input(index)
        shape = tuple(tensor.shape)
        if -1 not in shape:
            continue
        rest = shape[2:]
        if len(shape) < 2 or -1 in rest:
            raise EngineBuildError(
                f"input {tensor.name} has shape {shape}; the profile covers inputs whose only dynamic axes are "
                "the leading [batch, sequence]"
            )
        low, opt, high = ((*dims, *rest) for dims in (profile.min_shape, profile.opt_shape, profile.max_shape))
        optimization.set_shape(tensor.name, low, opt, high)
    if not optimization:  # IOptimizationProfile is falsy when its shapes are inconsistent
        raise EngineBuildError(
            f"TensorRT refused the profile min {format_shape(profile.min_shape)}, "
            f"opt {format_shape(profile.opt_shape)}, max {format_shape(profile.max_shape)}"
        )
    return optimization


def _use_timing_cache(config: Any, path: Path | None) -> None:
    data = path.read_bytes() if path is not None and path.is_file() else b""
    # A cache from another TensorRT or GPU does not set with ignore_mismatch=False: start afresh.
    if not config.set_timing_cache(config.create_timing_cache(data), ignore_mismatch=False):
        config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False)
