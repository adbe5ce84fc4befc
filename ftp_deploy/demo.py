"""Dense vs routed on one prompt: what `ftp-deploy run` (and `make demo`) shows first."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ftp_deploy.artifacts import load_routed
from ftp_deploy.generation import greedy_generate
from ftp_deploy.models import load_base_model
from ftp_deploy.placement import CPU, Placement
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule, check_sparsity


@dataclass
class DemoRow:
    """One model's greedy continuation of the prompt and its times."""

    name: str
    text: str
    prefill_seconds: float
    seconds: float


def compare_dense_routed(
    prompt: str,
    model: str,
    sparsity: float,
    router_dir: Path | None,
    max_new_tokens: int,
    trust_remote_code: bool = False,
    placement: Placement = CPU,
) -> list[DemoRow]:
    check_sparsity(sparsity)
    if router_dir is not None:
        routed, loaded, artifact = load_routed(router_dir, model, placement, trust_remote_code=trust_remote_code)
        label = f"routed ({router_dir}, mean sparsity {artifact.schedule.mean():.2f})"
    else:
        loaded = load_base_model(model, placement, trust_remote_code=trust_remote_code)
        num_layers = len(loaded.model.model.layers)
        routed = RoutedModel(loaded.model, Schedule.uniform(sparsity, num_layers), RouterSpec(kind="static"))
        label = f"routed (static router, sparsity {sparsity:g})"
    prompt_ids = loaded.tokenizer(prompt, return_tensors="pt").input_ids
    eos = loaded.tokenizer.eos_token_id

    def dense_next(ids: torch.Tensor) -> torch.Tensor:
        return loaded.model(ids, logits_to_keep=1).logits[:, -1]

    def routed_next(ids: torch.Tensor) -> torch.Tensor:
        return routed(ids, logits_to_keep=1).logits[:, -1]

    rows = []
    for name, fn in (("dense", dense_next), (label, routed_next)):
        generation = greedy_generate(fn, prompt_ids, max_new_tokens, eos)
        text = loaded.tokenizer.decode(generation.token_ids, skip_special_tokens=True)
        rows.append(DemoRow(name, text, generation.prefill_seconds, generation.seconds))
    return rows
