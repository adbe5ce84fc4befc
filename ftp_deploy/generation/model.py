"""The routed model behind transformers' own `generate`.

`generate` owns the loop (its greedy search and EOS handling are tested here; sampling and
streamers take the same calls, untested); this wrapper only maps its calls onto the routed
prefill (an empty cache) and cached decode (FTP_SPEC section 9). The cache must be a `RoutedCache` passed in by
the caller, since the `DynamicCache` that `generate` makes by default has no slot masks.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ftp_deploy.errors import ConfigError
from ftp_deploy.generation.cache import RoutedCache
from ftp_deploy.generation.reference import decode_step, routed_prefill
from ftp_deploy.routed_model import RoutedModel


class RoutedForCausalLM(PreTrainedModel, GenerationMixin):
    """Use as `model.generate(ids, attention_mask=mask, cache=RoutedCache(), ...)` with left padding."""

    # The wrapped decoder layers run with whatever attention the base model was loaded with.
    _supports_sdpa = True
    _supports_attention_backend = True

    def __init__(self, routed: RoutedModel) -> None:
        # A copy: PreTrainedModel's constructor settles the attention implementation on the
        # config it gets, and the base model's layers must keep reading their own.
        super().__init__(copy.deepcopy(routed.base.config))
        self.routed = routed
        self.generation_config = routed.base.generation_config

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: Any = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast:
        if not isinstance(cache, RoutedCache):
            raise ConfigError("generate with a routed model needs cache=RoutedCache()")
        if cache.is_empty:
            logits = routed_prefill(self.routed, input_ids, attention_mask, cache).logits
        else:
            logits = decode_step(self.routed, input_ids, cache)
        return CausalLMOutputWithPast(logits=logits.unsqueeze(1), cache=cache)
