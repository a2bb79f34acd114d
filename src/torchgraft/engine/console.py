"""What a run prints: a progress bar on a terminal, one plain line per epoch otherwise.

On a terminal (stdout is a TTY) each epoch shows a rich progress bar that is replaced by the
epoch's summary line when the epoch ends. In a log file or a pipe there are no bars and no
carriage returns — only the same summary lines, one per epoch, flushed as they happen.
Names that come from files (class names, paths) are printed as text, never as rich markup.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..terminal import PipeConsole

__all__ = ["RunConsole"]


class RunConsole:
    """Prints a run for people (stdout); ``quiet`` prints nothing."""

    def __init__(self, stream: TextIO | None = None, *, quiet: bool = False):
        stream = stream or sys.stdout
        self.quiet = quiet
        self.console = PipeConsole(file=stream, soft_wrap=True, highlight=False)
        self.interactive = self.console.is_terminal
        self._progress: Progress | None = None
        self._task = None

    def line(self, text: str = "") -> None:
        """A line of plain text (escaped: never interpreted as markup)."""
        if not self.quiet:
            self.console.print(escape(text))

    def rule(self, title: str) -> None:
        if not self.quiet:
            self.console.print(f"[bold]{escape(title)}[/bold]")

    def start_epoch(self, description: str, steps: int) -> None:
        """Begin an epoch's progress bar (on a terminal only)."""
        if self.quiet or not self.interactive:
            return
        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=self.console,
            transient=True,
        )
        self._progress.start()
        self._task = self._progress.add_task(escape(description), total=steps, status="")

    def advance(self, done: int, total: int, status: str = "") -> None:
        if self._progress is not None:
            self._progress.update(self._task, completed=done, total=total, status=status)

    def end_epoch(self, summary: str) -> None:
        """Close the bar and print the epoch's summary line."""
        self.stop_progress()
        self.line(summary)

    def stop_progress(self) -> None:
        """Close the bar, if one is shown (an interrupted epoch)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def table(self, title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        if self.quiet:
            return
        table = Table(
            title=escape(title),
            title_justify="left",
            show_edge=False,
            pad_edge=False,
            show_header=any(columns),
        )
        for column in columns:
            table.add_column(escape(column), overflow="fold")
        for row in rows:
            table.add_row(*(escape(_cell(c)) for c in row))
        self.console.print(table)

    def mapping(self, title: str, values: Mapping[str, Any]) -> None:
        self.table(title, ("", ""), [(k, v) for k, v in values.items()])


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
