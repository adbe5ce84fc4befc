"""Where a base model's weights live and in what precision, resolved once per command.

`--device`, `--dtype` and `--device-map` name a `Placement`; `resolve_placement` checks it against
this machine (before anything loads or is written) and `ftp_deploy.models.load_base_model` applies
it. Only the base model's weights take the dtype: the router, the losses and the statistics stay
fp32. A placed model takes its inputs on any device and hands its outputs back on the inputs'
device (accelerate's `io_same_device`), so callers keep their tensors where they are.

Importable without torch (the command line builds its options from it); torch loads when a
placement is resolved or applied.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ftp_deploy.errors import ConfigError, DeviceMemoryError, MissingDependencyError, UsageError

# The one vocabulary of precisions (base model weights, exported graphs) and of devices.
DTYPE_NAMES = ("fp32", "fp16", "bf16")
DEFAULT_DTYPE = "fp32"
DEFAULT_DEVICE = "auto"  # the first CUDA GPU when torch sees one, else the CPU
DEVICE_CHOICES = "auto, cpu, cuda or cuda:N"
DEVICE_MAPS = ("auto",)


@dataclass(frozen=True)
class Placement:
    """`device` is `cpu` or `cuda:N`; with `device_map="auto"` accelerate spreads the blocks over the
    visible GPUs instead, and `device` is only the first of them."""

    device: str = "cpu"
    dtype: str = DEFAULT_DTYPE
    device_map: str | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_NAMES:
            raise ConfigError(f"unknown dtype {self.dtype!r}; choose one of {', '.join(DTYPE_NAMES)}")
        if self.device_map is not None and self.device_map not in DEVICE_MAPS:
            raise ConfigError(f"unknown device map {self.device_map!r}; the one choice is auto")

    @property
    def on_cpu(self) -> bool:
        return self.device == "cpu" and self.device_map is None


CPU = Placement()


def resolve_placement(
    device: str = DEFAULT_DEVICE, dtype: str = DEFAULT_DTYPE, device_map: str | None = None
) -> Placement:
    """The placement the options name, on this machine; UsageError (exit 2) for what it cannot do.

    `auto` is the first CUDA GPU when torch sees one, else the CPU.
    """
    import torch

    Placement(dtype=dtype, device_map=device_map)  # the torch-free checks first
    text = device.strip().lower()
    has_cuda = torch.cuda.is_available()
    if device_map is not None:
        if text != "auto":
            raise UsageError(
                "--device-map auto places the model over every visible GPU itself; leave --device at auto "
                "(choose the GPUs with CUDA_VISIBLE_DEVICES)"
            )
        return Placement("cuda:0" if has_cuda else "cpu", dtype, device_map)
    if text == DEFAULT_DEVICE:
        # The current GPU, not cuda:0: each process of a multi-process run has made its own current.
        resolved = f"cuda:{torch.cuda.current_device()}" if has_cuda else "cpu"
    elif text == "cpu":
        resolved = "cpu"
    elif text == "cuda" or text.startswith("cuda:"):
        resolved = _cuda_device(text, has_cuda)
    else:
        raise UsageError(f"unknown --device {device!r}; choose {DEVICE_CHOICES}")
    placement = Placement(resolved, dtype)
    if dtype == "bf16" and resolved != "cpu" and not torch.cuda.is_bf16_supported():
        raise UsageError(f"the GPU {torch.cuda.get_device_name(resolved)} has no bf16 arithmetic; use --dtype fp16")
    return placement


def _cuda_device(text: str, has_cuda: bool) -> str:
    import torch

    if not has_cuda:
        why = "this torch is built without CUDA" if torch.version.cuda is None else "torch sees no CUDA GPU"
        raise MissingDependencyError(f"--device {text}: no CUDA GPU here ({why}); use --device cpu or auto")
    index_text = text.removeprefix("cuda").removeprefix(":") or str(torch.cuda.current_device())
    if not index_text.isdigit():
        raise UsageError(f"unknown --device {text!r}; choose {DEVICE_CHOICES}")
    count = torch.cuda.device_count()
    if int(index_text) >= count:
        raise UsageError(f"--device {text}: this machine has {count} CUDA GPU(s), cuda:0 to cuda:{count - 1}")
    return f"cuda:{int(index_text)}"


def module_device(module: Any) -> Any:
    """The device of a module's first parameter (or buffer); the CPU for one that has neither."""
    import torch

    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def on_device(tensor: Any, device: Any) -> Any:
    """`tensor` on `device`; no copy, and no node in a traced graph, where it is there already."""
    return tensor if tensor.device == device else tensor.to(device)


def attach_input_alignment(model: Any, device: str) -> None:
    """Inputs move to `device`, outputs come back to the inputs' device: what accelerate's dispatch
    gives a model spread over several devices, here for one."""
    from accelerate.hooks import AlignDevicesHook, add_hook_to_module

    add_hook_to_module(model, AlignDevicesHook(execution_device=device, io_same_device=True))


def place_module(module: Any, device: str) -> None:
    """A module built on the CPU onto `device`, its inputs and outputs aligned as load_base_model's are."""
    if device != "cpu":
        module.to(device)
        attach_input_alignment(module, device)


def check_device_map(device_map: dict[str, Any]) -> None:
    """Refuse offloaded blocks: the routed forward calls a block's parts itself, outside the hooks
    that would bring offloaded weights in."""
    devices = {str(where) for where in device_map.values()}
    offloaded = sorted(devices & {"cpu", "disk", "meta"})
    if offloaded and devices - {"cpu"}:
        raise UsageError(
            f"the model does not fit the GPUs' memory: accelerate offloaded part of it to {', '.join(offloaded)}, "
            "which the routed forward cannot run from; use --dtype bf16 or more GPUs"
        )


@contextlib.contextmanager
def memory_errors(lower_with: str) -> Iterator[None]:
    """A GPU out-of-memory error as one line naming the options that use less (`lower_with`)."""
    import torch

    try:
        yield
    except torch.cuda.OutOfMemoryError as err:
        # torch's message runs on with allocator statistics; its first two sentences say what failed.
        what = ". ".join(str(err).strip().split(". ")[:2]).partition("\n")[0].rstrip(".") or "out of GPU memory"
        raise DeviceMemoryError(f"{what}; use less memory with {lower_with}") from err
