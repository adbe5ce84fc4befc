"""Options every command that loads a model shares, declared once (typer's Annotated types)."""

from __future__ import annotations

from typing import Annotated

import typer

from ftp_deploy.placement import DTYPE_NAMES

MODEL_HELP = "smollm2-135m (embedded), a .gguf file, a local HF folder or a hub id"

ModelOption = Annotated[str, typer.Option(help=MODEL_HELP)]
ModelOverrideOption = Annotated[
    str | None, typer.Option(help=f"The base model, if not the one the run names (checked to match): {MODEL_HELP}")
]
TrustOption = Annotated[bool, typer.Option(help="Allow the model's own Python code from the hub (off by default)")]

# --device, --dtype and --device-map name an ftp_deploy.placement.Placement; a command resolves
# them once with resolve_placement(device, dtype, device_map) before it loads or writes anything.
DEVICE_HELP = "auto (a CUDA GPU when present, else the CPU), cpu, cuda or cuda:N: where the base model runs"
DeviceOption = Annotated[str, typer.Option(help=DEVICE_HELP)]
DtypeOption = Annotated[
    str,
    typer.Option(
        help=f"{', '.join(DTYPE_NAMES)}: the base model's weights (the router, losses and statistics stay fp32)"
    ),
]
DeviceMapOption = Annotated[
    str | None,
    typer.Option(
        help="auto: spread the base model's blocks over every visible GPU (accelerate's big-model inference) "
        "for a model larger than one GPU; --device stays auto"
    ),
]
ReferenceDeviceOption = Annotated[
    str,
    typer.Option(
        help="Where the PyTorch reference runs: auto (a CUDA GPU when present), cpu, cuda or cuda:N; it computes "
        "in the exported file's precision"
    ),
]
