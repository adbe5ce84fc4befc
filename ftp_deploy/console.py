"""The command layer's output: rich progress for the library's `Progress` contract, and the consoles.

Only the commands import this (and with it rich); the library reports through ftp_deploy.progress.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBars

from ftp_deploy.progress import Advance

console = Console()
err_console = Console(stderr=True)


class RichProgress:
    """Each phase a line on stderr: a spinner for a single step, a bar with a count for a phase of steps.

    Use it as a context manager around the library call; notes print above the bars.
    """

    def __init__(self, out: Console | None = None, transient: bool = False) -> None:
        self._bars = RichBars(
            SpinnerColumn(finished_text="[green]done[/]"),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=out or err_console,
            transient=transient,
        )

    def __enter__(self) -> RichProgress:
        self._bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self._bars.__exit__(None, None, None)

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None = None, completed: int = 0) -> Iterator[Advance]:
        task = self._bars.add_task(description, total=total or 1, completed=completed, status="")

        def advance(steps: int = 1, status: str = "") -> None:
            self._bars.update(task, advance=steps, status=status)

        yield advance
        if total is None:
            self._bars.update(task, completed=1)

    def note(self, text: str) -> None:
        self._bars.console.print(text, markup=False, highlight=False)
