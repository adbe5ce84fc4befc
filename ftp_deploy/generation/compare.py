"""Dense vs routed on one prompt, each with its KV cache: what `ftp-deploy run` (and `make demo`) shows first.

Both generate through transformers' own `generate` with a KV cache: the dense model with its
DynamicCache, the routed one with the per-layer compacted RoutedCache (FTP_SPEC section 9).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from ftp_deploy.artifacts import load_routed
from ftp_deploy.generation.pipeline import check_context, eos_ids, model_context, prompt_ids
from ftp_deploy.generation.settings import GenerationSettings
from ftp_deploy.generation.source import check_prompt
from ftp_deploy.generation.timed import Generation, generate_dense, generate_routed
from ftp_deploy.models import load_base_model
from ftp_deploy.placement import CPU, Placement
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule, check_sparsity


@dataclass
class DemoRow:
    """One model's greedy continuation of the prompt and its generation's times and cache size."""

    name: str
    text: str
    generation: Generation


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
    check_prompt(prompt)
    settings = GenerationSettings(max_new_tokens=max_new_tokens)
    if router_dir is not None:
        routed, loaded, artifact = load_routed(router_dir, model, placement, trust_remote_code=trust_remote_code)
        label = f"routed ({router_dir}, mean sparsity {artifact.schedule.mean():.2f})"
    else:
        loaded = load_base_model(model, placement, trust_remote_code=trust_remote_code)
        num_layers = len(loaded.model.model.layers)
        routed = RoutedModel(loaded.model, Schedule.uniform(sparsity, num_layers), RouterSpec(kind="static"))
        label = f"routed (static router, sparsity {sparsity:g})"
    ids = prompt_ids(loaded.tokenizer, prompt, chat=False)
    check_context(ids.shape[1], max_new_tokens, model_context(loaded.model.config), "the model's context")
    mask = torch.ones_like(ids)
    pad, eos = int(loaded.tokenizer.pad_token_id), eos_ids(loaded)
    runs = {
        "dense": lambda s: generate_dense(loaded.model, ids, mask, s, pad, eos),
        label: lambda s: generate_routed(routed, ids, mask, s, pad, eos),
    }
    # An untimed pass of each first: the first forward of a process pays for its allocations and kernel
    # set-up, which would otherwise be counted against whichever model runs first.
    for warm_up in runs.values():
        warm_up(replace(settings, max_new_tokens=min(2, max_new_tokens)))
    rows = []
    for name, run in runs.items():
        generation = run(settings)
        text = loaded.tokenizer.decode(generation.token_ids[0], skip_special_tokens=True)
        rows.append(DemoRow(name, text, generation))
    return rows
