"""The methods an evaluation compares, all at the routed run's token sparsity (FLOP-matched for ShortGPT)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ftp_deploy.errors import ConfigError
from ftp_deploy.evaluation.adapters import DenseScoring, RoutedScoring
from ftp_deploy.evaluation.methods import BASELINES, DENSE, FTP
from ftp_deploy.evaluation.scoring import ScoringModel
from ftp_deploy.evaluation.shortgpt import LayerSkipModel, block_influence, lowest_influence, removal_count
from ftp_deploy.flops import flop_ratio
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec
from ftp_deploy.schedule import Schedule


@dataclass
class Method:
    """A model to score and how it was made (its schedule, router, removed layers)."""

    name: str
    model: ScoringModel
    setup: dict[str, Any]


def _routed(name: str, routed: RoutedModel, seq_len: int, description: str) -> Method:
    setup = {
        "description": description,
        "router": routed.router_spec.kind,
        "schedule_thousandths": list(routed.schedule.thousandths),
        "schedule_sparsity": routed.schedule.mean(),
        "flop_ratio_at_seq_len": flop_ratio(routed.base.config, routed.schedule, seq_len),
    }
    return Method(name, RoutedScoring(routed), setup)


def shortgpt_method(base: Any, schedule: Schedule, seq_len: int, calibration: torch.Tensor) -> Method:
    layers = len(schedule)
    count = removal_count(base.config, schedule, seq_len)
    influence = block_influence(base, calibration)
    removed = lowest_influence(influence, count)
    setup = {
        "description": f"ShortGPT: {count} of {layers} layers removed (lowest Block Influence), FLOP-matched",
        "removed_layers": list(removed),
        "block_influence": influence,
        "calibration_tokens": calibration.numel(),
        "schedule_sparsity": count / layers,
        "flop_ratio_at_seq_len": (layers - count) / layers,
    }
    return Method("shortgpt", LayerSkipModel(base, removed), setup)


def build_methods(
    names: list[str],
    base: Any,
    schedule: Schedule,
    seq_len: int,
    schedule_source: str,
    calibration: torch.Tensor | None = None,
    ftp: RoutedModel | None = None,
) -> list[Method]:
    """The named baselines at `schedule`'s sparsity, then the trained run when given.

    `schedule_source` says where the schedule came from ("searched", "uniform") for the report.
    """
    methods = []
    for name in names:
        if name == DENSE:
            methods.append(Method(DENSE, DenseScoring(base), {"description": "the unmodified model"}))
        elif name == "random":
            uniform = Schedule.uniform(schedule.mean(), len(schedule), schedule.s_max)
            routed = RoutedModel(base, uniform, RouterSpec(kind="random"))
            methods.append(_routed(name, routed, seq_len, "random router, uniform schedule"))
        elif name == "static":
            routed = RoutedModel(base, schedule, RouterSpec(kind="static"))
            methods.append(_routed(name, routed, seq_len, f"static router, {schedule_source} schedule"))
        elif name == "shortgpt":
            if calibration is None:
                raise ConfigError("the shortgpt baseline needs calibration text")
            methods.append(shortgpt_method(base, schedule, seq_len, calibration))
        else:
            raise ConfigError(f"unknown baseline {name!r}; choose from {', '.join(BASELINES)}")
    if ftp is not None:
        methods.append(_routed(FTP, ftp, seq_len, f"FTP: trained router, {schedule_source} schedule"))
    return methods
