"""Progress bars for long CLI work: rich on a terminal, silent otherwise."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID


class Progress(Protocol):
    """What long-running library calls report to: ``advance(n)`` units done."""

    def advance(self, amount: float = 1) -> None: ...


class _NullProgress:
    def advance(self, amount: float = 1) -> None:
        return None


class _RichProgress:
    def __init__(self, bar: RichProgress, task_id: TaskID) -> None:
        self._bar = bar
        self._task_id = task_id

    def advance(self, amount: float = 1) -> None:
        self._bar.advance(self._task_id, amount)


@contextmanager
def progress_bar(
    description: str, total: float | None, *, unit_bytes: bool = False
) -> Iterator[Progress]:
    """A progress bar on stderr when it is a terminal; a no-op otherwise (logs, CI, pipes)."""
    if not sys.stderr.isatty():
        yield _NullProgress()
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        MofNCompleteColumn,
        TextColumn,
        TimeElapsedColumn,
        TransferSpeedColumn,
    )
    from rich.progress import Progress as RichProgress

    count_columns = (
        (DownloadColumn(), TransferSpeedColumn()) if unit_bytes else (MofNCompleteColumn(),)
    )
    with RichProgress(
        TextColumn("{task.description}"),
        BarColumn(),
        *count_columns,
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=False,
    ) as bar:
        task_id = bar.add_task(description, total=total)
        yield _RichProgress(bar, task_id)
