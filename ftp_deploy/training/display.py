"""Rich progress bars for the long phases, and the time budget that can cut them short."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

Advance = Callable[[str], None]


@contextmanager
def phase_progress(console: Console, description: str, total: int, completed: int = 0) -> Iterator[Advance]:
    """A progress bar; the yielded function advances it by one and sets the status text."""
    progress = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
    )
    with progress:
        task = progress.add_task(description, total=total, completed=completed, status="")
        yield lambda status: progress.update(task, advance=1, status=status)


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
