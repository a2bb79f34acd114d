"""What a run prints: a progress bar (with rate and time left) on a terminal, plain lines in a
log, names as text; any pass gets a bar through ``RunConsole.task``."""

from __future__ import annotations

import io
import re
import time

import pytest

from torchgraft.engine.console import PHASES, PhaseClock, RunConsole, phase_line


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def run_epoch(console: RunConsole) -> None:
    console.start_epoch("epoch 1/2 (head only)", 4)
    for step in range(1, 5):
        console.advance(step, 4)
    console.end_epoch("epoch 1: train loss 0.5")


def test_a_log_gets_one_plain_line_per_epoch_and_no_carriage_returns():
    stream = io.StringIO()
    run_epoch(RunConsole(stream))
    assert stream.getvalue() == "epoch 1: train loss 0.5\n"


def test_a_terminal_gets_a_progress_bar_then_the_summary_line():
    stream = Terminal()
    run_epoch(RunConsole(stream))
    out = stream.getvalue()
    assert "epoch 1/2 (head only)" in out  # the bar was drawn
    assert "\x1b[" in out  # with terminal control sequences
    assert out.rstrip().endswith("epoch 1: train loss 0.5")


def test_names_from_files_are_printed_as_text_not_markup():
    stream = io.StringIO()
    console = RunConsole(stream)
    console.line("class [bold]cat[/bold] and [/]")
    console.table("per class", ("class", "n"), [("[red]x[/red]", 3)])
    out = stream.getvalue()
    assert "[bold]cat[/bold] and [/]" in out
    assert "[red]x[/red]" in out


def test_quiet_prints_nothing():
    stream = Terminal()
    console = RunConsole(stream, quiet=True)
    run_epoch(console)
    console.table("t", ("a",), [("b",)])
    assert stream.getvalue() == ""


def shown_last(out: str) -> str:
    """The last frame a bar drew, without terminal control sequences."""
    frames = [re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", frame) for frame in out.split("\r")]
    return [frame for frame in frames if frame.strip()][-1]


class Clock:
    """A clock the test moves (rich measures rates and time left with the console's)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_terminal_bar_shows_the_rate_and_the_time_left():
    stream, clock = Terminal(), Clock()
    console = RunConsole(stream)
    console.console.get_time = clock
    console.start_epoch("epoch 12/30 (all layers from the stem, cached features)", 8)
    for step in (1, 2, 3):
        clock.now += 0.5
        console.advance(step, 8)
    console.stop_progress()  # interrupted after 3 of 8 steps: the last frame stays in the stream
    frame = shown_last(stream.getvalue())
    assert frame.startswith("epoch 12/30 (all layers")  # on one line of 80 columns, the
    assert "…" in frame  # label cut short rather than the numbers
    assert "3/8" in frame
    assert "2.00 steps/s" in frame  # 2 steps in the 1 s between the first and third
    assert "eta 0:00:03" in frame  # 5 steps left at 2 steps/s: 2.5 s, rounded up


def interrupted_pass(console: RunConsole, clock: Clock) -> None:
    """20 of 100 images at 40 images/s, then Ctrl-C."""
    with console.task("feature cache [frozen]", unit="images") as on_step:
        for done in (0, 10, 20):
            clock.now += 0.25
            on_step(done, 100)
        raise KeyboardInterrupt


def test_a_task_bar_follows_its_callback_and_closes_with_the_block():
    stream, clock = Terminal(), Clock()
    console = RunConsole(stream)
    console.console.get_time = clock
    with pytest.raises(KeyboardInterrupt):
        interrupted_pass(console, clock)
    out = stream.getvalue()
    frame = shown_last(out)
    assert "feature cache [frozen]" in frame  # a label is text, not markup
    assert "20/100" in frame
    assert "40.0 images/s" in frame
    assert "eta 0:00:02" in frame  # 80 images left at 40 images/s
    assert out.endswith("\x1b[2K")  # the bar was taken down: transient, like an epoch's
    console.line("after")  # and the console prints on as before
    assert stream.getvalue().endswith("after\n")


def test_a_log_gets_nothing_from_a_task_and_its_lines_unchanged():
    stream = io.StringIO()
    console = RunConsole(stream)
    with console.task("feature cache", 4) as on_step:
        for done in range(5):
            on_step(done, 4)
    run_epoch(console)
    assert stream.getvalue() == "epoch 1: train loss 0.5\n"


def test_a_quiet_terminal_gets_nothing_from_a_task():
    stream = Terminal()
    with RunConsole(stream, quiet=True).task("verify", 4) as on_step:
        on_step(1, 4)
    assert stream.getvalue() == ""


def test_phases_add_up_to_the_wall_time_and_a_nested_phase_counts_once():
    clock = Clock()
    phases = PhaseClock(now=clock)
    clock.now = 4.0  # building the model, reading the data
    phases.settle("start")
    with phases.phase("training"):
        clock.now += 10.0
        with phases.phase("validation"):  # inside another phase: the outer one pauses
            clock.now += 3.0
        clock.now += 1.0
    clock.now += 0.5  # between phases: printing, bookkeeping
    with phases.phase("training"):  # a phase timed again adds up
        clock.now += 2.0
    record = phases.record()
    assert record["phases"] == {"start": 4.0, "training": 13.0, "validation": 3.0, "other": 0.5}
    assert record["wall_seconds"] == 20.5
    assert record["from"] == "fit call"


def test_the_phase_line_adds_up_to_the_total_it_shows():
    # Seven phases of 0.14 s: each rounds to 0.1 s on its own (0.7 s), the total to 1.0 s.
    record = {
        "wall_seconds": 0.98,
        "from": "fit call",
        "phases": {name: 0.14 for name in PHASES[:-1]},
    }
    line = phase_line(record)
    assert line.startswith("wall 1.0 s: start 0.")
    assert "s (model, graft, data) · " in line  # the start's note: no imports in a fit call
    shown = [float(part) for part in re.findall(r"(\d+\.\d) s", line)]
    assert sum(shown[1:]) == pytest.approx(shown[0])  # the parts add up to the wall shown
    assert "\r" not in line


def test_a_phase_that_rounds_to_nothing_is_left_out_but_start_stays():
    record = {
        "wall_seconds": 12.34,
        "from": "process start",
        "phases": {"start": 0.01, "training": 12.3, "test": 0.0, "other": 0.03},
    }
    assert (
        phase_line(record)
        == "wall 12.3 s: start 0.0 s (imports, model, graft, data) · training 12.3 s"
    )


def test_python_calling_the_library_is_timed_from_the_call_not_from_its_process_start():
    before = time.perf_counter()
    clock = PhaseClock.for_command()  # pytest is not the torchgraft command
    assert clock.since == "fit call"
    assert clock.origin >= before
