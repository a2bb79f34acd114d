"""What a run prints: a progress bar on a terminal, one plain line per epoch otherwise.

On a terminal (stdout is a TTY) each epoch shows a rich progress bar — steps done, rate,
elapsed time and the time remaining — that is replaced by the epoch's summary line when the
epoch ends. Other passes that take a while (a graft's verification, the feature cache's pass
over the images, each epoch's validation, the test split, the report's pass over the
validation images) get the same bar through :meth:`RunConsole.task`, which hands the
library code a plain ``on_step(done, total)`` callback: the code that reports progress knows
nothing of rich. In a log file or a pipe there are no bars and no carriage returns — only the
same summary lines, one per epoch, flushed as they happen.
Names that come from files (class names, paths) are printed as text, never as rich markup.

Where the time went: :class:`PhaseClock` (``RunConsole.clock``) adds up the wall time of a
run's phases — start, feature cache, training, validation, checkpoints, test, report — and
:func:`phase_line` prints them as one line whose parts add up to the total shown.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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

__all__ = [
    "PHASES",
    "OnStep",
    "PhaseClock",
    "RateColumn",
    "RunConsole",
    "counting",
    "phase_line",
    "timed",
]

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
        self.clock = PhaseClock()  # tg.fit restarts it (PhaseClock.for_command) as it begins

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


#: The phases of a run, in the order :func:`phase_line` shows them; ``other`` is the time
#: no phase holds (printing, the bookkeeping between phases).
PHASES = (
    "start",
    "feature cache",
    "training",
    "validation",
    "checkpoints",
    "test",
    "report",
    "other",
)


class PhaseClock:
    """Wall time split by phase, on :func:`time.perf_counter`'s clock, from ``origin``.

    A block timed with :meth:`phase` adds its seconds to that phase (a phase inside another
    stops the outer one's count while it runs: no second is counted twice); :meth:`settle`
    gives a phase everything since the origin that no phase holds yet (the start of a run),
    and :meth:`record` the rest to ``other`` — so the parts always add up to the total.

    Example:
        >>> clock = PhaseClock()
        >>> with clock.phase("training"):
        ...     train()
        >>> clock.record()["phases"]["training"]
        12.5
    """

    def __init__(
        self,
        origin: float | None = None,
        *,
        since: str = "fit call",
        now: Callable[[], float] = time.perf_counter,
    ):
        self.now = now  # the clock read (a test's own, to move by hand)
        self.origin = now() if origin is None else origin
        self.since = since  # what the origin is: "process start" or "fit call"
        self.seconds: dict[str, float] = {}
        self._open: list[str] = []
        self._mark = self.origin

    @classmethod
    def for_command(cls) -> PhaseClock:
        """A clock from the start of this process when the process is the ``torchgraft``
        command (loading torch is part of the command's wall time: often seconds), else from
        now (``tg.fit`` called from Python, whose process may be hours old)."""
        age = _process_age() if _runs_the_command() else None
        if age is None:
            return cls()
        return cls(time.perf_counter() - age, since="process start")

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Time the block as ``name`` (added to what earlier blocks of that name took)."""
        self._charge()
        self._open.append(name)
        try:
            yield
        finally:
            self._charge()
            self._open.pop()

    def settle(self, name: str) -> None:
        """Give ``name`` all the time since the origin that no phase holds yet."""
        self._charge()
        counted = sum(self.seconds.values())
        self.seconds[name] = self.seconds.get(name, 0.0) + max(0.0, self.elapsed() - counted)

    def elapsed(self) -> float:
        """Seconds since the origin."""
        return self.now() - self.origin

    def record(self) -> dict[str, Any]:
        """``{"wall_seconds", "from", "phases": {name: seconds}}`` up to now: every phase
        timed, in :data:`PHASES` order, and ``other`` (what none holds); the phases add up
        to ``wall_seconds``."""
        self._charge()
        wall = self.elapsed()
        parts = dict(self.seconds)
        parts["other"] = parts.get("other", 0.0) + max(0.0, wall - sum(parts.values()))
        order = [*(p for p in PHASES if p in parts), *(p for p in parts if p not in PHASES)]
        return {
            "wall_seconds": round(wall, 3),
            "from": self.since,
            "phases": {name: round(parts[name], 3) for name in order},
        }

    def _charge(self) -> None:
        """The time since the last change goes to the innermost open phase, if any."""
        now = self.now()
        if self._open:
            name = self._open[-1]
            self.seconds[name] = self.seconds.get(name, 0.0) + now - self._mark
        self._mark = now


def phase_line(record: Mapping[str, Any]) -> str:
    """The one line of a :meth:`PhaseClock.record`: ``wall 48.2 s: start 6.1 s (model,
    graft, data) · training 30.5 s · …``.

    Each part is rounded to a tenth of a second so that the parts shown add up exactly to
    the total shown (largest remainders round up); a part that rounds to nothing is left out.
    """
    phases = record["phases"]
    wall = float(record["wall_seconds"])
    tenths = _apportioned({name: float(v) * 10 for name, v in phases.items()}, round(wall * 10))
    what = "imports, model, graft, data" if record.get("from") == "process start" else None
    notes = {"start": what or "model, graft, data"}
    parts = [
        f"{name} {count / 10:.1f} s" + (f" ({notes[name]})" if name in notes else "")
        for name, count in tenths.items()
        if count > 0 or name == "start"
    ]
    return f"wall {round(wall * 10) / 10:.1f} s: " + " · ".join(parts)


def timed(console: RunConsole | None, phase: str) -> contextlib.AbstractContextManager:
    """Time the block as ``phase`` on the clock of ``console`` (None: untimed)."""
    return contextlib.nullcontext() if console is None else console.clock.phase(phase)


def counting(batches: Iterable[tuple[Any, Any]], total: int, on_step: OnStep) -> Iterator:
    """``batches`` (``(inputs, targets)`` pairs) as they are, telling ``on_step(done, total)``
    the samples done: 0 before the first, then each time the next batch is asked for (the
    one before it is done by then)."""
    done = 0
    on_step(done, total)
    for inputs, targets in batches:
        yield inputs, targets
        done += len(targets)
        on_step(done, total)


def _apportioned(exact: Mapping[str, float], total: int) -> dict[str, int]:
    """Whole units for each of ``exact`` (non-negative) that add up to ``total`` when the
    values add up to it within rounding: each rounded down, then the largest remainders up."""
    units = {name: math.floor(value) for name, value in exact.items()}
    short = total - sum(units.values())
    by_remainder = sorted(exact, key=lambda n: exact[n] - units[n], reverse=True)
    for name in by_remainder[: max(0, short)]:
        units[name] += 1
    return units


def _runs_the_command() -> bool:
    """Whether this process is the ``torchgraft`` command (the console script, ``python -m
    torchgraft``, ``torchrun … -m torchgraft``), not Python that calls the library."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    script = os.path.basename(sys.argv[0]) if sys.argv else ""
    return getattr(spec, "name", None) == "torchgraft.__main__" or script == "torchgraft"


def _process_age() -> float | None:
    """Seconds since this process started, where the system says (Linux); else None."""
    try:
        with open("/proc/self/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()  # the name may hold spaces
        ticks = int(fields[19])  # field 22, starttime: clock ticks after boot
        age = time.clock_gettime(time.CLOCK_BOOTTIME) - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, AttributeError):
        return None
    return age if age >= 0 else None


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
