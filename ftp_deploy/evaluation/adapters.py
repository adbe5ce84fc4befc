"""The dense model and a routed model as the scorer sees them, each reporting what its blocks computed."""

from __future__ import annotations

from typing import Any

import torch

from ftp_deploy.evaluation.scoring import Forward
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import token_positions


class DenseScoring:
    """The unmodified Hugging Face model: every block computes every valid token."""

    exact_lengths = False

    def __init__(self, base: Any) -> None:
        self.base = base
        self.config = base.config

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_last: int) -> Forward:
        logits = self.base(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=token_positions(attention_mask),
            logits_to_keep=keep_last,
            use_cache=False,
        ).logits
        kept = attention_mask.sum(1, keepdim=True).expand(-1, self.config.num_hidden_layers)
        return Forward(logits, kept)


class RoutedScoring:
    """A RoutedModel in compact mode, the way it is deployed."""

    def __init__(self, routed: RoutedModel) -> None:
        self.routed = routed
        self.config = routed.base.config
        # Threshold routing decides token by token, so padding leaves a row's routing as it is alone;
        # top-k capacities (topk, monotone) depend on the padded length.
        self.exact_lengths = routed.routing_mode != "threshold"

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_last: int) -> Forward:
        out = self.routed(input_ids, attention_mask, mode="compact", logits_to_keep=keep_last)
        valid = attention_mask.bool()
        kept = torch.stack([(keep & valid).sum(1) for keep in out.keep], dim=1)
        return Forward(out.logits, kept)
