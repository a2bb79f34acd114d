"""Names are data: what a file (or a user's module) names is printed escaped, never obeyed.

A tensor key, a module name or an error message quoting one can hold terminal control
sequences (``\\x1b[2J`` clears the screen, ``\\x1b]0;…\\x07`` retitles the window) or rich
console markup (``[/]`` raises, ``[bold red]`` restyles). Every command prints them as the
characters they are: ESC as the four characters ``\\x1b``, brackets as brackets.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torchvision
from rich.console import Console

from torchgraft.cli.output import table
from torchgraft.policies.freezing import freeze
from torchgraft.text import printable, printable_lines

CLEAR = "\x1b[2J\x1b[H"
TITLE = "\x1b]0;pwned\x07"
FAKE = f"evil{CLEAR}\x1b[32mALL CHECKS PASSED\x1b[0m{TITLE}"
MARKUP = ["[/]", "[bold red]boom"]
RAW = ("\x1b", "\x07")  # what must never reach a terminal from a name


def _run(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torchgraft", *args],
        cwd=cwd,
        env={**env, "COLUMNS": "400"},  # wide enough that rich folds no key over two lines
        capture_output=True,
        text=True,
        timeout=300,
    )


def _assert_inert(text: str) -> None:
    for raw in RAW:
        assert raw not in text, f"raw {raw!r} reached the terminal: {text[-500:]!r}"


# --- the helpers themselves -------------------------------------------------------------------


def test_printable_escapes_control_characters_and_keeps_every_script():
    assert printable(FAKE) == (
        "evil\\x1b[2J\\x1b[H\\x1b[32mALL CHECKS PASSED\\x1b[0m\\x1b]0;pwned\\x07"
    )
    assert printable("layer1.0.conv1.weight") == "layer1.0.conv1.weight"
    assert printable("тензор.权重 [/]") == "тензор.权重 [/]"  # letters and brackets stay
    assert printable("a\u202eb\r\nc") == "a\\u202eb\\r\\nc"  # bidi override, CR, LF
    assert printable(printable(FAKE)) == printable(FAKE)  # escaping twice changes nothing
    # A multi-line text keeps its line breaks; every other control character is escaped.
    assert printable_lines(f"one {CLEAR}\ntwo\rthree\u2028") == (
        "one \\x1b[2J\\x1b[H\ntwo\\rthree\\u2028"
    )


def test_table_cells_are_data_not_markup():
    """Before: rich parsed cells as markup; '[/]' raised MarkupError, ESC went through."""
    buffer = io.StringIO()
    console = Console(file=buffer, width=300, force_terminal=False, color_system=None)
    console.print(table(MARKUP[1], ("key", "shape"), [(MARKUP[0], "3"), (MARKUP[1], 2), (FAKE, 1)]))
    shown = buffer.getvalue()
    assert "[/]" in shown
    assert shown.count("[bold red]boom") == 2  # the title and the cell, as written
    assert printable(FAKE) in shown
    _assert_inert(shown)


class _Forged(torch.nn.Module):
    """A model whose second stage is named to forge a line (add_module takes any string but
    a dot)."""

    STAGE = "stage\nALL CHECKS PASSED"

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 4, 3)
        self.add_module(self.STAGE, torch.nn.Conv2d(4, 4, 3))
        self.pool = torch.nn.AdaptiveAvgPool2d(1)
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        x = getattr(self, self.STAGE)(self.stem(x))
        return self.fc(self.pool(x).flatten(1))


def test_the_freeze_summary_escapes_group_names():
    """Before: a group named after a module holding a newline printed a line of its own."""
    summary = freeze(_Forged(), "none")
    assert _Forged.STAGE in [g.name for g in summary.groups]  # the data is kept exactly
    lines = summary.render().splitlines()
    assert not any(line.startswith("ALL CHECKS") for line in lines)
    assert any(line.startswith("stage\\nALL CHECKS PASSED ") for line in lines)


# --- the commands -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def odd_checkpoint(tmp_path_factory) -> Path:
    """squeezenet1_1's state_dict plus tensors whose names attack the terminal."""
    folder = tmp_path_factory.mktemp("odd_names")
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    for index, name in enumerate([FAKE, *MARKUP]):
        state[name] = torch.full((2,), float(index))
    torch.save(state, folder / "odd.pt")
    return folder / "odd.pt"


@pytest.mark.slow
def test_graft_prints_the_checkpoint_keys_escaped(odd_checkpoint, subprocess_env):
    """Before: the unexpected keys reached stdout raw (the screen cleared, a fake verdict)."""
    result = _run(
        ["graft", odd_checkpoint.name, "--into", "torchvision:squeezenet1_1", "--dry-run"],
        odd_checkpoint.parent,
        subprocess_env,
    )
    assert result.returncode == 0, result.stderr
    _assert_inert(result.stdout + result.stderr)
    assert printable(FAKE) in result.stdout
    assert "[/]" in result.stdout


@pytest.mark.slow
def test_inspect_prints_checkpoint_keys_escaped_and_json_keeps_them_exact(
    odd_checkpoint, subprocess_env
):
    shown = _run(
        ["inspect", odd_checkpoint.name, "--no-identify"], odd_checkpoint.parent, subprocess_env
    )
    assert shown.returncode == 0, shown.stderr
    _assert_inert(shown.stdout + shown.stderr)
    assert printable(FAKE) in shown.stdout
    assert "[/]" in shown.stdout
    assert "[bold red]boom" in shown.stdout

    document = _run(
        ["inspect", odd_checkpoint.name, "--no-identify", "--json"],
        odd_checkpoint.parent,
        subprocess_env,
    )
    assert document.returncode == 0, document.stderr
    _assert_inert(document.stdout)  # JSON escapes control characters itself (\u001b)
    keys = [t["key"] for t in json.loads(document.stdout)["tensors"]]
    assert FAKE in keys  # the data is kept exactly; only its display is escaped


ODD_MODULE = textwrap.dedent(
    """
    from torch import nn

    CLEAR = "\\x1b[2J\\x1b[H"


    class Odd(nn.Module):
        # add_module accepts any name without a dot: markup and ESC included.
        def __init__(self, num_classes=10):
            super().__init__()
            self.add_module("[/]", nn.Conv2d(3, 4, 3))
            self.add_module("bn" + CLEAR + "ALL CHECKS PASSED", nn.BatchNorm2d(4))
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.add_module("[bold red]fc", nn.Linear(4, num_classes))

        def forward(self, x):
            x = getattr(self, "bn" + CLEAR + "ALL CHECKS PASSED")(getattr(self, "[/]")(x))
            return getattr(self, "[bold red]fc")(self.pool(x).flatten(1))


    def build(num_classes=10):
        return Odd(num_classes)


    def broken(num_classes=10):
        raise RuntimeError("cannot build" + CLEAR + "ALL CHECKS PASSED")
    """
)


@pytest.fixture
def odd_module_env(tmp_path, subprocess_env) -> dict:
    (tmp_path / "oddnames.py").write_text(ODD_MODULE)
    env = dict(subprocess_env)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return env


@pytest.mark.slow
def test_inspect_a_model_whose_module_names_hold_markup_and_escapes(tmp_path, odd_module_env):
    """Before: internal error "MarkupError: closing tag '[/]' … has nothing to close"."""
    result = _run(["inspect", "oddnames:build", "--print-groups"], tmp_path, odd_module_env)
    assert result.returncode == 0, result.stderr
    _assert_inert(result.stdout + result.stderr)
    assert "[/]" in result.stdout
    assert "[bold red]fc" in result.stdout
    assert "bn\\x1b[2J\\x1b[HALL CHECKS PASSED" in result.stdout  # in the groups and audit


@pytest.mark.slow
def test_error_lines_escape_what_they_quote(tmp_path, odd_module_env):
    """Before: the user's exception text and a path reached stderr raw (an internal error)."""
    broken = _run(["inspect", "oddnames:broken"], tmp_path, odd_module_env)
    assert broken.returncode == 2, broken.stderr
    _assert_inert(broken.stderr)
    assert "cannot build\\x1b[2J\\x1b[HALL CHECKS PASSED" in broken.stderr

    path = f"./gone{TITLE}.pt"
    missing = _run(["inspect", path], tmp_path, odd_module_env)
    assert missing.returncode == 2, missing.stderr
    _assert_inert(missing.stderr)
    assert printable(path) in missing.stderr


@pytest.mark.slow
def test_a_key_holding_a_newline_cannot_forge_a_line_of_the_report(tmp_path, subprocess_env):
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    state["x\nALL CHECKS PASSED"] = torch.zeros(1)
    torch.save(state, tmp_path / "forge.pt")
    result = _run(
        ["graft", "forge.pt", "--into", "torchvision:squeezenet1_1", "--dry-run"],
        tmp_path,
        subprocess_env,
    )
    assert result.returncode == 0, result.stderr
    assert not any(line.lstrip().startswith("ALL CHECKS") for line in result.stdout.splitlines())
    assert "x\\nALL CHECKS PASSED" in result.stdout
