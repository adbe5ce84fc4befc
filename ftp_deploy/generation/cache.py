"""A KV cache whose blocks hold only the tokens they computed (FTP_SPEC sections 1 and 9).

Block `l`'s cache starts with the keys and values of its `K_l` kept prompt tokens, keys
rotated at their original positions, and grows by one slot per generated token, so every
block has its own length. A kept slot can hold padding (top-k keeps `K_l` slots even in a
row with fewer valid tokens), so each block also carries a per-slot validity mask.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import DynamicCache

from ftp_deploy.errors import ConfigError
from ftp_deploy.routing import additive_mask


class RoutedCache(DynamicCache):
    """transformers' `DynamicCache` (independent tensors per layer) plus slot validity and positions.

    `next_position[b]` is the position id the next token of row `b` gets: the number of valid
    tokens so far, which continues the prompt's positions under left padding. The prefill sets
    it, so an empty cache can be made before the prompt is seen (what `generate(cache=...)` needs).
    """

    def __init__(self) -> None:
        super().__init__()
        self.slot_valid: list[torch.Tensor] = []
        self.next_position = torch.zeros(0, dtype=torch.long)

    @property
    def is_empty(self) -> bool:
        return not self.slot_valid

    def add_slots(self, layer_idx: int, valid: torch.Tensor) -> None:
        """Record the validity [B, n] of the n slots `update` just appended to layer `layer_idx`."""
        if layer_idx == len(self.slot_valid):
            self.slot_valid.append(valid)
        elif layer_idx < len(self.slot_valid):
            self.slot_valid[layer_idx] = torch.cat([self.slot_valid[layer_idx], valid], dim=1)
        else:
            raise ConfigError(f"cache layer {layer_idx} was filled before layer {len(self.slot_valid)}")
        if self.slot_valid[layer_idx].shape[1] != self.get_seq_length(layer_idx):
            # The mask and the keys must describe the same slots, or decode would attend to the wrong ones.
            raise ConfigError(f"cache layer {layer_idx}: slot mask and keys differ in length")

    def holds_padding(self, layer_idx: int) -> bool:
        """Whether some cached slot of layer `layer_idx` holds padding (top-k kept more slots than a row has tokens)."""
        return not bool(self.slot_valid[layer_idx].all())

    def decode_mask(self, layer_idx: int, dtype: torch.dtype) -> torch.Tensor:
        """[B, 1, 1, len + 1] additive mask of one new token: the layer's valid slots and itself.

        Every cached slot precedes the new token in original position, so validity is the only
        condition; causality is implied.
        """
        cached = self.slot_valid[layer_idx]
        itself = torch.ones(cached.shape[0], 1, dtype=torch.bool, device=cached.device)
        return additive_mask(torch.cat([cached, itself], dim=1).unsqueeze(1), dtype)

    def layer_lengths(self) -> list[int]:
        return [self.get_seq_length(layer_idx) for layer_idx in range(len(self.layers))]


def cache_index(layer: Any) -> int:
    """The layer index a HF decoder layer's attention passes to `Cache.update`, so masks follow the same slots."""
    return int(layer.self_attn.layer_idx)


def kv_bytes(cache: DynamicCache) -> int:
    """Bytes of the cached keys and values over all layers (slot masks excluded: one bool per slot)."""
    return sum(int(keys.nbytes + values.nbytes) for keys, values, _ in cache if keys is not None)
