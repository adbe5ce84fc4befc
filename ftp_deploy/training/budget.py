"""The time budget that can cut a training command's phases short."""

from __future__ import annotations

import time
from typing import ClassVar


class TimeBudget:
    """Wall-clock budget of one command; each phase must end by its share of it.

    The shares are cumulative, so time a phase leaves unused passes to the next ones; the
    last 12% is kept for the held-out evaluation, the artifact and the report.
    """

    PHASE_END: ClassVar[dict[str, float]] = {"search": 0.25, "train": 0.75, "finetune": 0.88}

    def __init__(self, minutes: float | None) -> None:
        self.start = time.monotonic()
        self.seconds = None if minutes is None else minutes * 60

    def over(self, phase: str) -> bool:
        return self.seconds is not None and time.monotonic() - self.start >= self.PHASE_END[phase] * self.seconds
