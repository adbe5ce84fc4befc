"""One router-training step at a time (FTP_SPEC section 6), resumable from saved tensors.

The routed forward runs in masked mode with the straight-through gate: its values are the
hard top-k decisions, so the distillation loss a step reports is the KL that compact-mode
inference with the same router and schedule gives on that batch.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, cast

import torch
from torch import nn

from ftp_deploy.fidelity import kl_to_dense, log_probs, logits_to_keep, scored_logits
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import FACTOR_NAMES, FactorRouter, RouterSpec
from ftp_deploy.schedule import Schedule
from ftp_deploy.training.config import TrainConfig
from ftp_deploy.training.losses import LossWeights, guide_losses, soft_sparsity, sparsity_loss, static_keep
from ftp_deploy.training.ranks import ONE_PROCESS, Ranks

ROUTER_PREFIX = "router."
OPTIMIZER_PREFIX = "optimizer."
BEST_PREFIX = "best."
ROUTER_SPEC = RouterSpec(kind="learned")
INIT_SLOPE = 10.0
# GELU is the identity to within 0.2% above 3, so this offset keeps the attention unit linear.
ATTENTION_OFFSET = 4.0


@dataclass
class StepMetrics:
    """What one step measured, before its update. Sparsities are means over blocks."""

    step: int
    loss: float
    distill: float
    guide: float
    sparsity_loss: float
    guide_weight: float
    soft_sparsity: float  # expected skipped fraction from the keep probabilities
    hard_sparsity: float  # skipped fraction of the top-k decisions the forward used

    def to_json(self) -> dict[str, Any]:
        return {"phase": "train", **asdict(self)}


@torch.no_grad()
def dense_log_probs(base: Any, ids: torch.Tensor, scored: int) -> torch.Tensor:
    return log_probs(scored_logits(base(ids, logits_to_keep=logits_to_keep(scored)).logits, scored))


def new_router(seed: int, slope: float = INIT_SLOPE, attention_weight: float = 0.0) -> FactorRouter:
    """A router whose keep logit starts as `slope * (position - s_l) + attention_weight * (attention score - 1)`.

    One hidden unit carries `position - s_l` through GELU's linear range (its input stays
    in [4.4, 12]); with `attention_weight` a second carries the attention score (>= 0, 1 for a
    token that gets its uniform share) the same way, so tokens the recent queries attend to
    rank higher. The other units start with zero output weight and learn from there. At weight
    0 this is the static priority: training starts at the routing the schedule was searched with,
    and the guide loss near its minimum, instead of at a random routing whose KL is orders of
    magnitude worse.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        router = FactorRouter(ROUTER_SPEC.hidden)
    first, last = cast(nn.Linear, router.net[0]), cast(nn.Linear, router.net[2])
    gain, offset = 4.0, 8.0
    with torch.no_grad():
        first.weight[0].zero_()
        first.weight[0, FACTOR_NAMES.index("position")] = gain
        first.weight[0, FACTOR_NAMES.index("required_sparsity")] = -gain
        first.bias[0] = offset
        last.weight.zero_()
        last.weight[0, 0] = slope / gain
        last.bias.fill_(-slope * offset / gain)
        if attention_weight:
            first.weight[1].zero_()
            first.weight[1, FACTOR_NAMES.index("attention_score")] = 1.0
            first.bias[1] = ATTENTION_OFFSET
            last.weight[0, 1] = attention_weight
            last.bias.sub_(attention_weight * (ATTENTION_OFFSET + 1))
    return router


class RouterTrainer:
    """Trains `router` over a frozen base model on `blocks` [N, T]; the step count lives here.

    With several `ranks`, each rank runs its share of every global batch and the router's
    gradients are summed over the ranks before each update, so every rank holds the router
    one process would train on the whole global batch (to rounding).
    `spec`'s sink prefix is kept in every block and is part of the guide loss's targets, so the
    router starts from, and is guided towards, the static routing with that prefix. A `prior`
    router (the starting one, when it also weighs the attention score) replaces the static order
    as the guide's target: its decisions, in a no-grad forward of each batch.
    """

    def __init__(
        self,
        base: Any,
        schedule: Schedule,
        blocks: torch.Tensor,
        config: TrainConfig,
        weights: LossWeights,
        router: FactorRouter,
        seed: int,
        ranks: Ranks = ONE_PROCESS,
        checkpoint_activations: bool = False,
        spec: RouterSpec = ROUTER_SPEC,
        routing_mode: str = "topk",
        prior: FactorRouter | None = None,
    ) -> None:
        for parameter in base.parameters():
            parameter.requires_grad_(False)
        base.eval()
        self.base = base
        self.schedule = schedule
        self.blocks = blocks
        self.config = config
        self.weights = weights
        self.seed = seed
        self.ranks = ranks
        self.router = router
        self.spec = spec
        self.routed = RoutedModel(
            base, schedule, spec, routing_mode, router=router, checkpoint_blocks=checkpoint_activations
        )
        self.prior = None if prior is None else RoutedModel(base, schedule, spec, routing_mode, router=prior)
        self.optimizer = torch.optim.AdamW(router.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.best_kl = float("inf")
        self.best_step = 0
        self.best_state = _cloned(router.state_dict())

    def validate(self, kl: Callable[[RoutedModel], float]) -> float:
        """Score the current router with `kl`; keep its weights if they are the best so far.

        The STE gradient is a first-order, noisy estimate of what a routing change does, and
        a step can make the routing worse; keeping the best-scoring router means training
        never ships a router worse than the static-like one it started from.
        """
        value = kl(self.routed)
        if value < self.best_kl:
            self.best_kl, self.best_step, self.best_state = value, self.step, _cloned(self.router.state_dict())
        return value

    def use_best(self) -> None:
        self.router.load_state_dict(self.best_state)

    def batch(self, step: int) -> torch.Tensor:
        """The global batch of `step`: epochs of seeded permutations, so any step's batch is known without replay."""
        count = self.blocks.shape[0]
        first = step * self.config.batch_size
        picks = []
        for index in range(first, first + self.config.batch_size):
            epoch, offset = divmod(index, count)
            order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
            picks.append(int(order[offset]))
        return self.blocks[picks]

    def train_step(self) -> StepMetrics:
        """One update on this rank's share of the step's global batch; the metrics are the global batch's."""
        ids = self.batch(self.step)[self.ranks.share(self.config.batch_size)]
        mask = torch.ones_like(ids)
        valid = mask.bool()
        tokens = int(valid.sum())
        scored = self.config.scored
        mean = self.ranks.global_mean
        dense = dense_log_probs(self.base, ids, scored)
        out = self.routed(ids, mask, mode="masked", gate_gradient=True, logits_to_keep=logits_to_keep(scored))
        distill = mean(kl_to_dense(dense, scored_logits(out.logits, scored)), ids.shape[0])
        guide = mean(guide_losses(out.router_logits, self.guide_targets(ids, mask), valid), tokens).mean()
        soft = mean(soft_sparsity(out.router_logits, valid), tokens)
        penalty = sparsity_loss(soft, self.schedule)
        guide_weight = self.weights.guide_weight(self.step, self.config.steps)
        loss = guide_weight * guide + self.weights.sparsity * penalty + self.weights.distill * distill
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._sum_gradients()
        self.optimizer.step()
        hard = mean(torch.stack([1 - keep[valid].float().mean() for keep in out.keep]), tokens).mean()
        metrics = StepMetrics(
            step=self.step,
            loss=float(loss.detach()),
            distill=float(distill.detach()),
            guide=float(guide.detach()),
            sparsity_loss=float(penalty.detach()),
            guide_weight=guide_weight,
            soft_sparsity=float(soft.detach().mean()),
            hard_sparsity=float(hard),
        )
        self.step += 1
        return metrics

    @torch.no_grad()
    def guide_targets(self, ids: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
        """Per block, the prior's keep decisions on this batch: the static order's, or the prior router's."""
        if self.prior is None:
            return static_keep(mask, self.schedule, self.spec.sink_fraction)
        return self.prior(ids, mask, logits_to_keep=1).keep

    def _sum_gradients(self) -> None:
        """Each rank's gradient is its share's part of the global loss's: their sum is the whole."""
        if self.ranks.world == 1:
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.router.parameters()]
        flat = self.ranks.sum_(torch.cat([g.reshape(-1) for g in grads]))
        for parameter, part in zip(self.router.parameters(), flat.split([g.numel() for g in grads]), strict=True):
            parameter.grad = part.view_as(parameter)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Router weights, AdamW moments and the best router so far, flat and named, for safetensors."""
        tensors = {ROUTER_PREFIX + name: t.detach().clone() for name, t in self.router.state_dict().items()}
        tensors |= {BEST_PREFIX + name: t.clone() for name, t in self.best_state.items()}
        tensors["best_kl"] = torch.tensor(self.best_kl, dtype=torch.float64)
        tensors["best_step"] = torch.tensor(self.best_step)
        for index, state in self.optimizer.state_dict()["state"].items():
            for key, value in state.items():
                tensors[f"{OPTIMIZER_PREFIX}{index}.{key}"] = value.detach().clone()
        return tensors

    def load_state_tensors(self, tensors: dict[str, torch.Tensor], step: int) -> None:
        self.router.load_state_dict(_prefixed(tensors, ROUTER_PREFIX))
        self.best_state = _prefixed(tensors, BEST_PREFIX)
        self.best_kl, self.best_step = float(tensors["best_kl"]), int(tensors["best_step"])
        state: dict[int, dict[str, torch.Tensor]] = defaultdict(dict)
        for key, value in tensors.items():
            if key.startswith(OPTIMIZER_PREFIX):
                index, name = key.removeprefix(OPTIMIZER_PREFIX).split(".", 1)
                state[int(index)][name] = value
        groups = self.optimizer.state_dict()["param_groups"]
        self.optimizer.load_state_dict({"state": dict(state), "param_groups": groups})
        self.step = step


def _cloned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {name: t.detach().clone() for name, t in state.items()}


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}
