"""ONNX Runtime sessions for exported models, in Polygraphy's style.

Small loader callables that the caller composes and that do nothing until called, and a runner
with activate / infer / deactivate (a Polygraphy `BaseRunner`, so Polygraphy's Comparator takes
it too):

    runner = OrtRunner(SessionFromOnnx(path, device="cpu", options=SessionOptionsLoader(threads=2)))
    with runner:
        outputs = runner.infer({"input_ids": ids, "attention_mask": mask})
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from polygraphy.backend.base import BaseRunner
from polygraphy.common import TensorMetadata
from polygraphy.datatype import DataType

from ftp_deploy.errors import MissingDependencyError

# Execution providers by device; each list ends with the providers ORT falls back to.
DEVICE_PROVIDERS = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
DEVICES = tuple(DEVICE_PROVIDERS)
GRAPH_OPTIMIZATIONS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}
_ERROR_SEVERITY = 3


def available_devices() -> tuple[str, ...]:
    present = set(ort.get_available_providers())
    return tuple(device for device, providers in DEVICE_PROVIDERS.items() if providers[0] in present)


def execution_providers(device: str, trt_cache: Path | None = None) -> list[str | tuple[str, dict[str, Any]]]:
    """The provider list for `device`, or MissingDependencyError naming what to install."""
    if device not in DEVICE_PROVIDERS:
        raise MissingDependencyError(f"unknown device {device!r}; choose one of {', '.join(DEVICES)}")
    if device not in available_devices():
        present = ", ".join(ort.get_available_providers())
        raise MissingDependencyError(
            f"ONNX Runtime here has no {DEVICE_PROVIDERS[device][0]} (it has {present}); "
            "a GPU build needs a CUDA GPU and: pip install 'ftp-deploy[gpu]'"
        )
    providers: list[str | tuple[str, dict[str, Any]]] = list(DEVICE_PROVIDERS[device])
    if device == "tensorrt" and trt_cache is not None:
        # Building a TensorRT engine takes minutes; the cache makes later sessions load it instead.
        options = {"trt_engine_cache_enable": True, "trt_engine_cache_path": str(trt_cache)}
        providers[0] = (DEVICE_PROVIDERS[device][0], options)
    return providers


@dataclass(frozen=True)
class SessionOptionsLoader:
    """ort.SessionOptions: all graph optimizations, one sequential executor, `threads` intra-op threads.

    `threads=None` keeps ONNX Runtime's default of one thread per physical core. `prepacking=False`
    keeps kernels from repacking constant weights into copies of their own (exporters/merge.py says when).
    """

    threads: int | None = None
    graph_optimization: str = "all"
    prepacking: bool = True

    def __call__(self) -> ort.SessionOptions:
        options = ort.SessionOptions()
        options.graph_optimization_level = GRAPH_OPTIMIZATIONS[self.graph_optimization]
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1  # the executor is sequential: a second pool would idle
        if self.threads is not None:
            options.intra_op_num_threads = self.threads
        options.log_severity_level = _ERROR_SEVERITY
        if not self.prepacking:
            options.add_session_config_entry("session.disable_prepacking", "1")
        return options


@dataclass(frozen=True)
class SessionFromOnnx:
    """An InferenceSession over a model file (its external data beside it) or serialized bytes."""

    model: Path | bytes
    device: str = "cpu"
    options: Callable[[], ort.SessionOptions] = field(default_factory=SessionOptionsLoader)
    trt_cache: Path | None = None

    def __call__(self) -> ort.InferenceSession:
        providers = execution_providers(self.device, self.trt_cache)
        source = str(self.model) if isinstance(self.model, Path) else self.model
        return ort.InferenceSession(source, sess_options=self.options(), providers=providers)


class OrtRunner(BaseRunner):
    """Runs a session through one reused IO binding; outputs come back as numpy arrays.

    `outputs`, if given, are the only ones returned (a with-past prefill's cache is compared elsewhere).
    """

    def __init__(
        self,
        session: Callable[[], ort.InferenceSession],
        name: str | None = None,
        outputs: Sequence[str] | None = None,
    ) -> None:
        super().__init__(name=name, prefix="ftp-ort-runner")
        self._load_session = session
        self._returned = None if outputs is None else tuple(outputs)
        self.session: ort.InferenceSession | None = None
        self._binding: Any = None
        self._output_device = "cpu"

    def activate_impl(self) -> None:
        self.session = self._load_session()
        self._binding = self.session.io_binding()
        self._output_device = "cpu" if self.session.get_providers()[0] == "CPUExecutionProvider" else "cuda"

    def get_input_metadata_impl(self) -> TensorMetadata:
        meta = TensorMetadata()
        for node in self._active_session().get_inputs():
            meta.add(node.name, dtype=DataType.from_dtype(node.type, "onnxruntime"), shape=node.shape)
        return meta

    def output_names(self) -> list[str]:
        return [node.name for node in self._active_session().get_outputs()]

    def infer_impl(self, feed_dict: Mapping[str, np.ndarray]) -> OrderedDict[str, np.ndarray]:
        session, binding = self._active_session(), self._binding
        binding.clear_binding_inputs()
        binding.clear_binding_outputs()
        for name, array in feed_dict.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        names = self.output_names()
        for name in names:
            binding.bind_output(name, self._output_device)
        start = time.perf_counter()
        session.run_with_iobinding(binding)
        self.inference_time = time.perf_counter() - start
        results = zip(names, binding.copy_outputs_to_cpu(), strict=True)
        return OrderedDict((n, a) for n, a in results if self._returned is None or n in self._returned)

    def deactivate_impl(self) -> None:
        self.session = None
        self._binding = None

    def _active_session(self) -> ort.InferenceSession:
        if self.session is None:
            raise RuntimeError(f"{self.name} is not active: use it as a context manager or call activate()")
        return self.session
