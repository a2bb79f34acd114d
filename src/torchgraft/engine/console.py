"""What a run prints: a progress bar on a terminal, one plain line per epoch otherwise.

On a terminal (stdout is a TTY) each epoch shows a rich progress bar — steps done, rate,
elapsed time and the time remaining — that is replaced by the epoch's summary line when the
epoch ends. Other passes that take a while (the feature cache's pass over the images, a
graft's verification) get the same bar through :meth:`RunConsole.task`, which hands the
library code a plain ``on_step(done, total)`` callback: the code that reports progress knows
nothing of rich. In a log file or a pipe there are no bars and no carriage returns — only the
same summary lines, one per epoch, flushed as they happen.
Names that come from files (class names, paths) are printed as text, never as rich markup.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, TextIO

from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Column, Table
from rich.text import Text

from ..terminal import PipeConsole

__all__ = ["OnStep", "RateColumn", "RunConsole"]

#: What a pass calls as it goes: ``on_step(done, total)``, ``done`` rising to ``total``.
OnStep = Callable[[int, int], None]


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
        self._progress = self._bar()
        self._progress.start()
        self._task = self._progress.add_task(description, total=steps, status="", unit="steps")

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

    @contextlib.contextmanager
    def task(
        self, description: str, total: int | None = None, *, unit: str = "steps"
    ) -> Iterator[OnStep]:
        """A progress bar for one pass, closed when the block ends (also by an exception).

        Yields the pass's ``on_step(done, total)``: the bar appears at its first call and
        follows it (``total`` may be learnt on the way: the call's own wins over this one's).
        On a terminal only; elsewhere, or ``quiet``, the callback does nothing.

        Args:
            description: what the bar is labelled with (shown as text, never as markup).
            total: how many units the pass does, when known before it starts.
            unit: what the rate counts (``"images"`` gives ``… images/s``).

        Example:
            >>> with console.task("feature cache", unit="images") as on_step:
            ...     cache = FeatureCache(model, entry, data, runtime, batch_size=64, on_step=on_step)
        """
        if self.quiet or not self.interactive:
            yield _ignore
            return
        progress: Progress | None = None
        task = None

        def on_step(done: int, steps: int | None = None) -> None:
            nonlocal progress, task
            steps = total if steps is None else steps
            if progress is None:
                progress = self._bar()
                task = progress.add_task(description, total=steps, status="", unit=unit)
                progress.start()
            progress.update(task, completed=done, total=steps)

        try:
            yield on_step
        finally:
            if progress is not None:
                progress.stop()

    def _bar(self) -> Progress:
        """What a bar shows: label, bar, done/total, rate, elapsed, ETA, status."""
        # On a narrow terminal the label and the status are cut short (…), never the numbers.
        return Progress(
            _Label("description"),
            BarColumn(bar_width=10, table_column=_fixed()),
            MofNCompleteColumn(table_column=_fixed()),
            RateColumn(table_column=_fixed()),
            TimeElapsedColumn(table_column=_fixed()),
            TextColumn("eta", table_column=_fixed()),
            TimeRemainingColumn(table_column=_fixed()),
            _Label("status"),
            console=self.console,
            transient=True,
        )

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


class RateColumn(ProgressColumn):
    """The rate of a task, in its ``unit`` field per second (``12.4 steps/s``); ``?`` until
    rich has two samples to measure it from."""

    def render(self, task: Task) -> Text:
        unit = task.fields.get("unit", "steps")
        speed = task.finished_speed or task.speed
        if speed is None:
            return Text(f"? {unit}/s", style="progress.data.speed")
        shown = (
            f"{speed:,.0f}" if speed >= 100 else f"{speed:.1f}" if speed >= 10 else f"{speed:.2f}"
        )
        return Text(f"{shown} {unit}/s", style="progress.data.speed")


class _Label(ProgressColumn):
    """A task's description (or another text field) as plain text — a name from a file is
    never markup — that gives way first on a narrow terminal: cut short with …, on one line."""

    def __init__(self, field: str):
        super().__init__(table_column=Column(no_wrap=False))  # the columns a table narrows
        self.field = field

    def render(self, task: Task) -> Text:
        text = task.description if self.field == "description" else task.fields[self.field]
        return Text(text, no_wrap=True, overflow="ellipsis")


def _fixed() -> Column:
    """A column of numbers: never wrapped, kept whole while the labels give way."""
    return Column(no_wrap=True)


def _ignore(done: int, total: int | None = None) -> None:
    """The ``on_step`` of a pass nobody watches."""


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)
