"""Progress on stderr for steps that take more than a moment: a live line with the elapsed time
on a terminal; otherwise (logs, CI) one plain ``vpindex: ...`` line for each step still running
after :data:`QUIET_S` seconds, so quick commands print nothing extra. stdout is never touched,
so ``--json`` output stays one object."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

__all__ = ["QUIET_S", "Reporter", "progress"]

#: Without a terminal, a step is announced once it has run this long.
QUIET_S = 2.0


class Reporter(Protocol):
    """What a running command reports through."""

    def step(self, text: str) -> None:
        """A new step has started (replaces the previous one)."""

    def advance(self, done: int, total: int) -> None:
        """``done`` of ``total`` units of the current step are finished."""


class _Live:
    def __init__(self, bar: Progress) -> None:
        self._bar = bar
        self._task: TaskID | None = None

    def step(self, text: str) -> None:
        if self._task is not None:
            self._bar.remove_task(self._task)
        self._task = self._bar.add_task(text, total=None)

    def advance(self, done: int, total: int) -> None:
        if self._task is not None:
            self._bar.update(self._task, completed=done, total=total)


class _Lines:
    def __init__(self) -> None:
        self._timer: threading.Timer | None = None

    @staticmethod
    def _announce(text: str) -> None:
        sys.stderr.write(f"vpindex: {text} (running for {QUIET_S:g} s or more)\n")
        sys.stderr.flush()

    def step(self, text: str) -> None:
        self.stop()
        self._timer = threading.Timer(QUIET_S, self._announce, (text,))
        self._timer.daemon = True
        self._timer.start()

    def advance(self, done: int, total: int) -> None:
        """Plain lines show steps only."""

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


@contextmanager
def progress() -> Iterator[Reporter]:
    """A :class:`Reporter` for the duration of the block; the live line disappears at the end."""
    console = Console(stderr=True)
    if not console.is_terminal:
        lines = _Lines()
        try:
            yield lines
        finally:
            lines.stop()
        return
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(bar_width=20),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    ) as bar:
        yield _Live(bar)
