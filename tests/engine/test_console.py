"""What a run prints: a progress bar on a terminal, plain lines in a log, names as text."""

from __future__ import annotations

import io

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
