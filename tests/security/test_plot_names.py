"""Names drawn in plots are data: a class folder named ``esc\\x1b[2J`` or ``bel\\x07`` is drawn
escaped, and nothing raw reaches the terminal through matplotlib.

Before: matplotlib's Agg renderer, missing a glyph for ESC or BEL in DejaVu Sans, warned
``Glyph 27 (\\x1b) missing from font(s) DejaVu Sans.`` with the raw character in the message
(it escapes non-ASCII characters by name, not ASCII control characters), and Python printed
the warning on stderr during ``torchgraft train``.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import warnings

import pytest
import yaml

from support import tiny_config, write_digit_folder
from torchgraft.engine.report import lr_plots, plots
from torchgraft.text import printable

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed"
)

#: Clears the screen, rings the bell, reverses the text after it, and a glyph DejaVu lacks.
NAMES = ["esc\x1b[2Jname", "bel\x07name", "rtl\u202ename", "tibetan\u0f00"]


def raw_controls(text: str) -> list[str]:
    """Characters of ``text`` that a terminal would obey (line breaks and tabs aside)."""
    return [ch for ch in text if not ch.isprintable() and ch not in "\n\t"]


def drawn_texts(figure) -> list[str]:
    from matplotlib.text import Text

    return [t.get_text() for t in figure.findobj(Text)]


def test_every_plot_draws_names_escaped_and_warns_only_in_printable_words(monkeypatch):
    figures = []
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda f, p: figures.append(f) or real_save(f, p))
    rows = [{"epoch": 0, "split": name, "loss": 1.0, "acc1": 0.5} for name in NAMES]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plots.plot_confusion([[1] * 4] * 4, NAMES, io.BytesIO(), title=NAMES[0])
        plots.plot_curves(rows, io.BytesIO())
        lr_plots.plot_lr([0, 1], {name: [0.1, 0.2] for name in NAMES}, io.BytesIO())
        lr_plots.plot_lr_finder(
            [1e-3, 1e-2], [1.0, 0.5], io.BytesIO(), marks={NAMES[1]: 1e-3}, lr_name=NAMES[0]
        )
    for figure in figures:
        texts = drawn_texts(figure)
        assert not [t for t in texts if raw_controls(t)], texts
    confusion = drawn_texts(figures[0])
    for name in NAMES:
        assert printable(name) in confusion  # ticks: as the terminal shows them
    assert f"{printable(NAMES[0])} (log scale)" in drawn_texts(figures[3])  # the LR axis
    messages = [str(w.message) for w in caught]
    assert any("missing from font" in m for m in messages)  # the Tibetan glyph: still said
    assert not [m for m in messages if raw_controls(m)], messages


@pytest.mark.slow
def test_training_on_classes_named_with_escapes_prints_nothing_raw(
    tmp_path, console_script, subprocess_env
):
    """A real ``torchgraft train`` (plots on: curves, LR, confusion matrix) on class folders
    named with ESC and BEL; ``torchgraft report`` of the run after it."""
    data = write_digit_folder(tmp_path / "digits", classes=(0, 1), per_class=6)
    os.rename(data / "0", data / NAMES[0])
    os.rename(data / "1", data / NAMES[1])
    config = tiny_config(data, tmp_path / "runs", train={"epochs": 1}, output={"plots": True})
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in subprocess_env.items() if k not in ("FORCE_COLOR", "TTY_COMPATIBLE")}
    env["PYTHONWARNINGS"] = "always"  # every warning shown, as a developer's shell may have it
    run = tmp_path / "runs" / "run"
    for argv in (["train", "--config", "config.yaml"], ["report", str(run)]):
        done = subprocess.run(
            [*console_script, *argv], cwd=tmp_path, env=env, capture_output=True, text=True,
            timeout=300,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert raw_controls(done.stdout + done.stderr) == [], done.stdout + done.stderr
    assert (run / "confusion.png").stat().st_size > 0
