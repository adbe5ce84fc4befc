"""A TensorRT plan of an artifact folder, run in Polygraphy's style (like engines/onnx_runtime.py):

    runner = TrtPlanRunner(EngineFromPlan(art_dir))
    with runner:
        outputs = runner.infer({"input_ids": ids, "attention_mask": mask})

Before TensorRT reads the plan, model.plan.json is checked against this machine (TensorRT release,
GPU, compute capability) and the plan against its sha256; each input shape is checked against the
optimization profile before it is set. Device buffers are torch CUDA tensors, run with
set_tensor_address + execute_async_v3 on a torch stream.

Written against the documented TensorRT 10.6+/11 Python API; the code that touches TensorRT or
CUDA needs both. The checks it calls first (trt_plan.check_plan_compatible,
trt_profile.check_shapes_in_profile) are pure Python.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from ftp_deploy.engines.trt_env import current_environment, error_logger, require_tensorrt_gpu
from ftp_deploy.engines.trt_plan import check_plan_compatible, read_plan_manifest, rebuild_command
from ftp_deploy.engines.trt_profile import ShapeProfile, check_shapes_in_profile, format_shape
from ftp_deploy.errors import ArtifactError, EngineLoadError, PluginMissingError, ShapeOutOfProfileError
from ftp_deploy.fileio import sha256_file
from ftp_deploy.formats.plan_manifest import PLAN_FILE, PlanManifest, PluginId
from ftp_deploy.plugins.token_compaction.trt_plugin import register_trt_plugins

PURPOSE = "running a TensorRT plan"


@dataclass
class LoadedPlan:
    """A deserialized engine with what made it; the runtime is kept alive as long as the engine."""

    trt: Any
    runtime: Any
    engine: Any
    manifest: PlanManifest
    logger: Any


@dataclass(frozen=True)
class EngineFromPlan:
    """Loader: `folder`/model.plan, checked against model.plan.json and this machine, then deserialized."""

    folder: Path

    def __call__(self) -> LoadedPlan:
        trt = require_tensorrt_gpu(PURPOSE)
        manifest = read_plan_manifest(self.folder)
        check_plan_compatible(manifest, current_environment(trt), self.folder)
        plan = self.folder / PLAN_FILE
        if not plan.is_file():
            raise ArtifactError(f"{plan} is missing: build it with {' '.join(rebuild_command(self.folder))}")
        if sha256_file(plan) != manifest.sha256.plan:
            raise ArtifactError(f"{plan} does not match the sha256 in its model.plan.json")
        # JIT plugin layers call back into these registrations; AOT ones carry their kernels.
        register_trt_plugins()
        logger = error_logger(trt)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(plan.read_bytes())
        if engine is None:
            missing = missing_plugins(trt, manifest.plugins)
            if missing:
                raise PluginMissingError(
                    f"{plan} needs TensorRT plugins this process has not registered: "
                    f"{', '.join(map(str, missing))} (register_trt_plugins() in "
                    "ftp_deploy.plugins.token_compaction.trt_plugin registers them)"
                )
            raise EngineLoadError(f"TensorRT could not deserialize {plan}: {'; '.join(logger.errors[-5:])}")
        return LoadedPlan(trt, runtime, engine, manifest, logger)


def missing_plugins(trt: Any, plugins: Sequence[PluginId]) -> list[PluginId]:
    """The plugins TensorRT's plugin registry has no creator for."""
    registry = trt.get_plugin_registry()
    return [p for p in plugins if registry.get_creator(p.name, p.version, p.namespace) is None]


class TrtPlanRunner(BaseRunner):
    """Runs a plan on the current CUDA device; outputs come back as numpy arrays (bf16 as fp32).

    Needs TensorRT and a GPU.
    """

    def __init__(self, plan: Callable[[], LoadedPlan], name: str | None = None) -> None:
        super().__init__(name=name, prefix="ftp-trt-runner")
        self._load_plan = plan
        self.loaded: LoadedPlan | None = None
        self._context: Any = None
        self._stream: Any = None

    def activate_impl(self) -> None:
        import torch

        self.loaded = self._load_plan()
        self._context = self.loaded.engine.create_execution_context()
        if self._context is None:
            raise EngineLoadError(f"TensorRT could not create an execution context: {self._last_errors()}")
        self._stream = torch.cuda.Stream()

    def get_input_metadata_impl(self) -> TensorMetadata:
        loaded = self._active()
        meta = TensorMetadata()
        for name in self._names(input_mode=True):
            dtype = DataType.from_dtype(loaded.engine.get_tensor_dtype(name), "tensorrt")
            meta.add(name, dtype=dtype, shape=tuple(loaded.engine.get_tensor_shape(name)))
        return meta

    def infer_impl(self, feed_dict: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        import torch

        loaded, context = self._active(), self._context
        shapes = {name: np.shape(array) for name, array in feed_dict.items()}
        check_shapes_in_profile(shapes, ShapeProfile.from_record(loaded.manifest.profile))
        buffers: dict[str, torch.Tensor] = {}
        with torch.cuda.stream(self._stream):
            for name in self._names(input_mode=True):
                array = np.ascontiguousarray(feed_dict[name])
                buffers[name] = torch.from_numpy(array).to("cuda", self._torch_dtype(name))
                if not context.set_input_shape(name, tuple(array.shape)):
                    raise ShapeOutOfProfileError(
                        f"TensorRT refused {name} of shape {format_shape(array.shape, 'x')}: {self._last_errors()}"
                    )
            outputs = self._names(input_mode=False)
            for name in outputs:
                shape = tuple(context.get_tensor_shape(name))
                if any(dim < 0 for dim in shape):
                    raise EngineLoadError(f"output {name} has no shape before the run ({shape}); it is not supported")
                buffers[name] = torch.empty(shape, dtype=self._torch_dtype(name), device="cuda")
            for name, tensor in buffers.items():
                context.set_tensor_address(name, tensor.data_ptr())
            start = time.perf_counter()
            if not context.execute_async_v3(self._stream.cuda_stream):
                raise EngineLoadError(f"TensorRT failed to run the plan: {self._last_errors()}")
            self._stream.synchronize()
            self.inference_time = time.perf_counter() - start
        return OrderedDict((name, _to_numpy(buffers[name])) for name in outputs)

    def deactivate_impl(self) -> None:
        self._context = None
        self._stream = None
        self.loaded = None

    def _active(self) -> LoadedPlan:
        if self.loaded is None:
            raise RuntimeError(f"{self.name} is not active: use it as a context manager or call activate()")
        return self.loaded

    def _names(self, input_mode: bool) -> list[str]:
        loaded = self._active()
        engine, mode = loaded.engine, loaded.trt.TensorIOMode.INPUT
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        return [n for n in names if (engine.get_tensor_mode(n) == mode) == input_mode]

    def _torch_dtype(self, name: str) -> Any:
        import torch

        trt = self._active().trt
        types = {
            trt.float32: torch.float32,
            trt.float16: torch.float16,
            trt.bfloat16: torch.bfloat16,
            trt.int64: torch.int64,
            trt.int32: torch.int32,
            trt.bool: torch.bool,
        }
        return types[self._active().engine.get_tensor_dtype(name)]

    def _last_errors(self) -> str:
        errors = self.loaded.logger.errors[-5:] if self.loaded is not None else []
        return "; ".join(errors) or "TensorRT logged no error"


def _to_numpy(tensor: Any) -> np.ndarray:
    import torch

    if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
        tensor = tensor.float()
    result: np.ndarray = tensor.cpu().numpy()
    return result
