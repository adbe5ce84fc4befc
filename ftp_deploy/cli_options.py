"""Options every command that loads a model shares, declared once (typer's Annotated types)."""

from __future__ import annotations

from typing import Annotated

import typer

MODEL_HELP = "smollm2-135m (embedded), a .gguf file, a local HF folder or a hub id"

ModelOption = Annotated[str, typer.Option(help=MODEL_HELP)]
ModelOverrideOption = Annotated[
    str | None, typer.Option(help=f"The base model, if not the one the run names (checked to match): {MODEL_HELP}")
]
TrustOption = Annotated[bool, typer.Option(help="Allow the model's own Python code from the hub (off by default)")]
