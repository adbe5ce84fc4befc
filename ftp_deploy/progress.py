"""The one progress contract of train, eval, export and verify; rich draws it in the command layer only.

Library code announces each phase and advances it; it never prints:

    with progress.phase("router training", total=steps) as advance:
        for step in range(steps):
            ...
            advance(status=f"loss {loss:.3f}")

A phase without a total is a single step (a spinner that turns into "done"). `note` is a line of
information that is not a phase. `NO_PROGRESS` shows nothing and is every function's default.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Protocol


class Advance(Protocol):
    def __call__(self, steps: int = 1, status: str = "") -> None: ...


class Progress(Protocol):
    def phase(self, description: str, total: int | None = None, completed: int = 0) -> AbstractContextManager[Advance]:
        """A phase of `total` steps (`completed` of them done before); the context yields its Advance."""
        ...

    def note(self, text: str) -> None:
        """A line of information that is not a phase."""
        ...


def _ignore(steps: int = 1, status: str = "") -> None:
    """What NO_PROGRESS advances: nothing."""


class NoProgress:
    @contextlib.contextmanager
    def phase(self, description: str, total: int | None = None, completed: int = 0) -> Iterator[Advance]:
        yield _ignore

    def note(self, text: str) -> None:
        """Nothing is shown."""


NO_PROGRESS: Progress = NoProgress()
