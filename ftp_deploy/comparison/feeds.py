"""Inputs that mean something: real token ids from held-out text, padded batches, seeded ids.

Feeds are Polygraphy feed dicts (`input_ids`, `attention_mask`, int64) and are saved with
Polygraphy's JSON (numpy arrays as `np.save` without pickle), so `--inputs FILE` replays them
here and in `polygraphy run --load-inputs`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ftp_deploy.errors import UsageError
from ftp_deploy.formats.export_manifest import INPUT_NAMES

Feed = OrderedDict[str, np.ndarray]
DEFAULT_PARITY_LENGTHS = (1, 24, 128)


@dataclass(frozen=True)
class InputPlan:
    """Which feeds parity runs on: each length as a real-text batch and a random-id batch."""

    lengths: Sequence[int] = DEFAULT_PARITY_LENGTHS
    batch: int = 2
    seed: int = 0
    pad_fraction: float = 0.25


def _feed(ids: np.ndarray, mask: np.ndarray) -> Feed:
    return OrderedDict(input_ids=ids.astype(np.int64), attention_mask=mask.astype(np.int64))


def padded_mask(batch: int, length: int, pad_fraction: float) -> np.ndarray:
    """All ones, except the last row is left-padded by `pad_fraction` of the length (never to empty).

    Left, as a prefill batch is padded, so the last position is a real token in every row.
    """
    mask = np.ones((batch, length), dtype=np.int64)
    pad = min(int(length * pad_fraction), length - 1)
    if batch > 1 and pad > 0:
        mask[-1, :pad] = 0
    return mask


def text_feeds(token_ids: Sequence[int], plan: InputPlan, pad_id: int) -> list[Feed]:
    """Consecutive windows of tokenized held-out text, one batch per length."""
    feeds = []
    needed = max(plan.lengths) * plan.batch
    if len(token_ids) < needed:
        raise UsageError(f"the held-out text has {len(token_ids)} tokens; verify needs at least {needed}")
    source = np.asarray(token_ids[:needed], dtype=np.int64)
    for length in plan.lengths:
        ids = source[: plan.batch * length].reshape(plan.batch, length).copy()
        mask = padded_mask(plan.batch, length, plan.pad_fraction)
        feeds.append(_feed(np.where(mask == 1, ids, pad_id), mask))
    return feeds


def random_feeds(vocab_size: int, plan: InputPlan, pad_id: int) -> list[Feed]:
    rng = np.random.default_rng(plan.seed)
    feeds = []
    for length in plan.lengths:
        ids = rng.integers(0, vocab_size, size=(plan.batch, length))
        mask = padded_mask(plan.batch, length, plan.pad_fraction)
        feeds.append(_feed(np.where(mask == 1, ids, pad_id), mask))
    return feeds


def save_feeds(feeds: list[Feed], path: Path) -> None:
    from polygraphy.json import save_json
    from polygraphy.logger import G_LOGGER

    with G_LOGGER.verbosity(G_LOGGER.ERROR):
        save_json(feeds, str(path), description="ftp-deploy verify inputs")


def load_feeds(path: Path) -> list[Feed]:
    from polygraphy.json import load_json

    if not path.is_file():
        raise UsageError(f"inputs file not found: {path}")
    try:
        loaded: Any = load_json(str(path))
    except Exception as err:  # Polygraphy raises bare Exceptions for malformed JSON
        raise UsageError(f"{path} is not a Polygraphy inputs JSON file: {err}") from err
    if not isinstance(loaded, list) or not all(isinstance(f, dict) and set(INPUT_NAMES) <= set(f) for f in loaded):
        raise UsageError(f"{path} must hold a list of feeds with {', '.join(INPUT_NAMES)}")
    return [_feed(np.asarray(f["input_ids"]), np.asarray(f["attention_mask"])) for f in loaded]
