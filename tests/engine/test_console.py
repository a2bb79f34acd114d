"""What a run prints: a progress bar (with rate and time left) on a terminal, plain lines in a
log, names as text; any pass gets a bar through ``RunConsole.task``."""

from __future__ import annotations

import io
import re

import pytest

from torchgraft.engine.console import RunConsole


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
