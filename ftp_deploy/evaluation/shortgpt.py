"""ShortGPT baseline: remove the whole decoder layers with the lowest Block Influence.

Block Influence of layer l is 1 - cos(input, output), averaged over the tokens of a
calibration text; the layers that change the hidden state least go first.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ftp_deploy.errors import DataError
from ftp_deploy.evaluation.loaders import read_text
from ftp_deploy.evaluation.scoring import Forward, encode_text, token_windows
from ftp_deploy.flops import flop_ratio
from ftp_deploy.placement import module_device, on_device
from ftp_deploy.routed_model import RoutedModel
from ftp_deploy.router import RouterSpec, token_positions
from ftp_deploy.routing import additive_mask, compact_allowed
from ftp_deploy.schedule import Schedule

CALIBRATION_FILE = "calibration_text/exllamav2_wiki.utf8"
CALIBRATION_WINDOWS = 8
CALIBRATION_TOKENS = 256
# The Wikipedia extract wraps articles in <doc ...> tags, which are markup, not text.
_DOC_TAG = re.compile(r"</?doc[^>]*>")


def calibration_file(data_dir: Path | None) -> Path:
    if data_dir is None:
        raise DataError(f"the shortgpt baseline needs calibration text: give --data-dir (with {CALIBRATION_FILE})")
    path = data_dir / CALIBRATION_FILE
    if not path.is_file():
        raise DataError(f"shortgpt calibration text not found: {path}")
    return path


def calibration_ids(tokenizer: Any, path: Path) -> torch.Tensor:
    """[N, CALIBRATION_TOKENS] token ids from the start of the calibration text."""
    ids = encode_text(tokenizer, _DOC_TAG.sub("", read_text(path)))
    return torch.tensor(token_windows(ids, CALIBRATION_TOKENS)[:CALIBRATION_WINDOWS])


def block_influence(base: Any, calibration: torch.Tensor) -> list[float]:
    """1 - mean cosine similarity of each decoder layer's input and output hidden states."""
    layers = len(base.model.layers)
    # At sparsity 0 the routed forward is the dense one, and it hands back every block's output.
    probe = RoutedModel(base, Schedule.uniform(0.0, layers), RouterSpec(kind="static"))
    with torch.inference_mode():
        outputs = probe(calibration, logits_to_keep=1, return_block_outputs=True).block_outputs
        embed = base.model.embed_tokens
        embedded = on_device(embed(on_device(calibration, module_device(embed))), calibration.device)
        inputs = [embedded, *outputs[:-1]]
        return [
            1 - float(F.cosine_similarity(i.float(), o.float(), dim=-1).mean())
            for i, o in zip(inputs, outputs, strict=True)
        ]


def removal_count(config: Any, schedule: Schedule, seq_len: int) -> int:
    """Whole layers to remove to save the block FLOPs the routed schedule saves at `seq_len` tokens."""
    layers = len(schedule)
    return min(layers - 1, round((1 - flop_ratio(config, schedule, seq_len)) * layers))


def lowest_influence(influence: list[float], count: int) -> tuple[int, ...]:
    return tuple(sorted(sorted(range(len(influence)), key=influence.__getitem__)[:count]))


class LayerSkipModel:
    """The base model with some decoder layers removed: every token skips them."""

    exact_lengths = False

    def __init__(self, base: Any, removed: Iterable[int]) -> None:
        self.base = base
        self.config = base.config
        self.removed = frozenset(removed)

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep_last: int) -> Forward:
        backbone = self.base.model
        first = module_device(backbone.embed_tokens)
        hidden = backbone.embed_tokens(on_device(input_ids, first))
        positions = token_positions(on_device(attention_mask, first))
        position_embeddings = backbone.rotary_emb(hidden, positions)
        valid = attention_mask.bool()
        # Without padding, plain causal SDPA as in the dense model, so removing nothing is dense.
        mask = None if bool(valid.all()) else additive_mask(compact_allowed(positions, valid.to(first)), hidden.dtype)
        for index, layer in enumerate(backbone.layers):
            if index not in self.removed:
                device = module_device(layer)  # the next GPU of a device map
                hidden, mask = on_device(hidden, device), None if mask is None else on_device(mask, device)
                position_embeddings = tuple(on_device(t, device) for t in position_embeddings)
                hidden = layer(hidden, attention_mask=mask, position_embeddings=position_embeddings)
        hidden = on_device(hidden[:, -keep_last:], module_device(backbone.norm))
        logits = self.base.lm_head(on_device(backbone.norm(hidden), module_device(self.base.lm_head)))
        computed = torch.tensor([index not in self.removed for index in range(len(backbone.layers))])
        return Forward(on_device(logits, input_ids.device), attention_mask.sum(1, keepdim=True) * computed)
