"""What every benchmark script shares: the timing helpers and the --json output."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ftp_deploy.data_root import data_file
from ftp_deploy.fidelity import SCORED_POSITIONS, Fidelity
from ftp_deploy.formats.record import to_json
from ftp_deploy.formats.run_state import HeldoutRow
from ftp_deploy.stats import describe
from ftp_deploy.timing import interleaved_times, summarize
from ftp_deploy.training.config import CALIBRATION_TEXT, DataConfig
from ftp_deploy.training.data import TokenData, load_token_data
from ftp_deploy.training.reference import DenseReference

if TYPE_CHECKING:
    from ftp_deploy.routed_model import RoutedModel

WIKITEXT = data_file("wikitext2/wiki.test.raw")

__all__ = [
    "WIKITEXT",
    "calibration_data",
    "dense_references",
    "heldout_totals",
    "interleaved_times",
    "require_wikitext",
    "summarize",
    "versus_static",
    "wikitext_windows",
    "write_json",
]


def write_json(path: Path | None, figures: dict[str, Any]) -> None:
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(to_json(figures), indent=2) + "\n", encoding="utf-8")  # records as JSON


def require_wikitext() -> None:
    if not WIKITEXT.is_file():
        sys.exit(f"wikitext-2 test text not found at {WIKITEXT}")


def wikitext_windows(tokenizer: object, count: int, length: int) -> torch.Tensor:
    """`count` non-overlapping windows spread evenly over the test text (CRLF read as LF)."""
    text = WIKITEXT.read_text(encoding="utf-8").replace("\r\n", "\n")
    ids = torch.tensor(tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"])  # type: ignore[operator]
    windows = ids[: ids.numel() // length * length].view(-1, length)
    picks = torch.linspace(0, windows.shape[0] - 1, count).round().long()
    return windows[picks]


def calibration_data(tokenizer: Any, seq_len: int, seed: int) -> TokenData:
    """The training blocks `ftp-deploy train` reads by default (the calibration text), split as it splits them."""

    def no_self(count: int, length: int, seed: int) -> torch.Tensor:
        raise SystemExit("the calibration text is read here, not the model's own samples")

    return load_token_data(str(data_file(CALIBRATION_TEXT)), tokenizer, DataConfig(seq_len=seq_len), seed, no_self)


def dense_references(base: Any, windows: torch.Tensor) -> Iterator[DenseReference]:
    """One dense reference per four windows, made as it is read: only one chunk's log-probs are held unless kept."""
    return (DenseReference(base, chunk, SCORED_POSITIONS) for chunk in windows.split(4))


def heldout_totals(references: Iterable[DenseReference], routings: dict[str, RoutedModel]) -> dict[str, Fidelity]:
    """Every routing scored on the same windows; each dense reference serves all of them."""
    totals = {name: Fidelity() for name in routings}
    for reference in references:
        for name, model in routings.items():
            reference.fidelity(model, totals[name])
    return totals


def versus_static(row: HeldoutRow) -> str:
    """A held-out row's KL minus the plain static router's, with its 95% interval ('' for that row itself)."""
    versus = row.kl_minus.get("static_uniform")
    return "" if versus is None else describe(versus, digits=4)
