"""Per-(block, token) importance labels from one forward/backward at the routed point, and a ranking fit.

One straight-through step gives the router one noisy number (the batch's KL). The gradient of that
KL with respect to every block's per-token gate gives a label for every (block, token) pair instead:
`-dKL/dgate` is the first-order gain of computing the token in that block (for a kept token, what
skipping it would cost; for a skipped one, what keeping it would save). The router is then fitted to
rank tokens as those labels do (a pairwise logistic loss), with the guide loss towards its prior.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ftp_deploy.fidelity import kl_to_dense, logits_to_keep, scored_logits
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.training.losses import guide_losses, static_keep
from ftp_deploy.training.trainer import dense_log_probs


@dataclass
class ImportanceBatch:
    """What the fit needs of one batch: each block's router inputs, labels and the prior's decisions."""

    factors: list[torch.Tensor]  # [B, T, 4] per block
    labels: list[torch.Tensor]  # [B, T] per block: -dKL/dgate
    prior: list[torch.Tensor]  # [B, T] bool per block: the static (+ sink prefix) keep decisions
    free: torch.Tensor  # [B, T] bool: valid tokens the routing may choose (not forced)


def importance_batch(routed: RoutedModel, ids: torch.Tensor, scored: int) -> ImportanceBatch:
    """Route `ids` once (recording the router's inputs), then replay those decisions with a gate per
    (block, token) and backpropagate the KL to dense into the gates."""
    if routed.router is None:
        raise ValueError("importance labels train a learned router")
    mask = torch.ones_like(ids)
    factors: list[torch.Tensor] = []
    hook = routed.router.register_forward_hook(lambda _m, inputs, _o: factors.append(inputs[0].detach()))
    try:
        with torch.no_grad():
            keep = routed(ids, mask, mode="masked").keep
    finally:
        hook.remove()
    dense = dense_log_probs(routed.base, ids, scored)
    hidden = routed.base.model.embed_tokens(ids)
    tokens = routed.token_facts(hidden, mask, always_mask=False)
    gates = [k.to(hidden.dtype).requires_grad_(True) for k in keep]
    for layer, block_keep, gate in zip(routed.layers, keep, gates, strict=True):
        hidden = routed.masked_update(layer, hidden, block_keep, gate, tokens)
    logits = routed.base.lm_head(routed.base.model.norm(hidden[:, -logits_to_keep(scored) :]))
    kl = kl_to_dense(dense, scored_logits(logits, scored))
    grads = torch.autograd.grad(kl, gates)
    return ImportanceBatch(
        factors=factors,
        labels=[-g.detach() for g in grads],
        prior=static_keep(mask, routed.schedule, routed.router_spec.sink_fraction),
        free=tokens.valid & ~tokens.forced,
    )


def ranking_loss(
    logits: torch.Tensor, labels: torch.Tensor, free: torch.Tensor, pairs: int, generator: torch.Generator
) -> torch.Tensor:
    """Pairwise logistic loss on `pairs` random token pairs per row: the higher label should score higher.

    Pairs are weighted by how far apart their labels are, so near-ties (noise) count little.
    """
    losses = []
    for row in range(logits.shape[0]):
        candidates = torch.nonzero(free[row]).flatten()
        if len(candidates) < 2:
            continue
        picks = candidates[torch.randint(len(candidates), (2, pairs), generator=generator)]
        gap = labels[row, picks[0]] - labels[row, picks[1]]
        margin = logits[row, picks[0]] - logits[row, picks[1]]
        weight = gap.abs() / gap.abs().mean().clamp(min=1e-12)
        losses.append((weight * F.softplus(-torch.sign(gap) * margin)).mean())
    return torch.stack(losses).mean() if losses else logits.sum() * 0


def fit_router(
    router: Any,
    batches: list[ImportanceBatch],
    steps: int,
    lr: float = 1e-3,
    guide_weight: float = 1.0,
    pairs: int = 512,
    seed: int = 0,
) -> list[float]:
    """Fit `router` to the labels of `batches` (cheap: the router alone runs); return the loss per step."""
    optimizer = torch.optim.AdamW(router.parameters(), lr=lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(seed)
    history = []
    for step in range(steps):
        batch = batches[step % len(batches)]
        logits = [router(f) for f in batch.factors]
        rank = torch.stack(
            [ranking_loss(z, y, batch.free, pairs, generator) for z, y in zip(logits, batch.labels, strict=True)]
        ).mean()
        loss = rank + guide_weight * guide_losses(logits, batch.prior, batch.free).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append(float(loss.detach()))
    return history
