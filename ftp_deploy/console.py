"""The command layer's output: rich progress for the library's `Progress` contract, and the consoles.

Only the commands import this (and with it rich); the library reports through ftp_deploy.progress.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichBars

from ftp_deploy.progress import Advance

# soft_wrap: a printed line is never broken at the width (a path in a pipe stays whole); tables still fit it.
console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


class RichProgress:
    """Each phase a line on stderr: a spinner for a single step, a bar with a count for a phase of steps.

    Use it as a context manager around the library call; notes print above the bars. On a console
    that is not a terminal (a pipe, a log file, CI) the phases are plain lines instead, never cut to
    the width: one at most every `PLAIN_EVERY_S` seconds while a phase advances and one when it ends
    (a phase that fails prints nothing, so an error stays the one line it is); a transient progress
    prints nothing there, so its command's output is all that reaches the pipe.
    """

    PLAIN_EVERY_S = 10.0

    def __init__(self, out: Console | None = None, transient: bool = False) -> None:
        self._console = out or err_console
        self._plain = not self._console.is_terminal
        self._quiet = self._plain and transient
        self._bars = RichBars(
            SpinnerColumn(finished_text="[green]done[/]"),
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self._console,
            transient=transient,
        )

    def __enter__(self) -> RichProgress:
        if not self._plain:
            self._bars.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._plain:
            self._bars.__exit__(None, None, None)

    @contextlib.contextmanager
    def phase(self, description: str, total: int | None = None, completed: int = 0) -> Iterator[Advance]:
        if self._plain:
            with self._plain_phase(description, total, completed) as plain_advance:
                yield plain_advance
            return
        task = self._bars.add_task(description, total=total or 1, completed=completed, status="")

        def advance(steps: int = 1, status: str = "") -> None:
            self._bars.update(task, advance=steps, status=status)

        yield advance
        if total is None:
            self._bars.update(task, completed=1)

    @contextlib.contextmanager
    def _plain_phase(self, description: str, total: int | None, completed: int) -> Iterator[Advance]:
        began = last = time.monotonic()
        done, latest = completed, ""

        def advance(steps: int = 1, status: str = "") -> None:
            nonlocal done, latest, last
            done, latest = done + steps, status
            if time.monotonic() - last >= self.PLAIN_EVERY_S:
                last = time.monotonic()
                self._line(f"{description}: {done}/{total} {latest}".rstrip())

        yield advance
        count = f"{done}/{total}, " if total is not None else ""
        self._line(f"{description}: done ({count}{time.monotonic() - began:.0f} s) {latest}".rstrip())

    def _line(self, text: str) -> None:
        if not self._quiet:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)

    def note(self, text: str) -> None:
        self._console.print(text, markup=False, highlight=False, soft_wrap=True)
