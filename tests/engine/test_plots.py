"""Run-directory plots: valid PNGs written atomically, the right content, literal user text,
no pyplot and no global matplotlib state."""

from __future__ import annotations

import importlib.util
import io
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from torchgraft.engine.report import lr_plots, plots
from torchgraft.errors import DataError

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib is not installed"
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
#: Names that mathtext cannot parse: drawn as mathtext they raise ValueError.
BAD_MATH = [r"$\foo$", "$x^$"]
#: Names that mathtext or LaTeX would change or choke on, which must print as written.
ODD_NAMES = [*BAD_MATH, "a_b^c", r"back\slash{}", "$5 and $6", "_private"]


def _png_size(path: Path) -> tuple[int, int]:
    """The image's (width, height); fails unless ``path`` is a complete, valid PNG."""
    from PIL import Image

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        image.load()  # decodes every row: a truncated file raises here
        return image.size


def _litter(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def _rows(epochs: int = 3) -> list[dict]:
    rows = []
    for epoch in range(epochs):
        rows.append({"epoch": epoch, "split": "train", "loss": 2.0 - epoch, "acc1": 0.5})
        rows.append({"epoch": epoch, "split": "val", "loss": 2.5 - epoch, "acc1": 0.4})
    return rows


@pytest.fixture(autouse=True)
def _default_style():
    """matplotlib's own defaults: a developer's matplotlibrc must not change image sizes."""
    import matplotlib

    with matplotlib.rc_context():
        matplotlib.rcdefaults()
        yield


@pytest.fixture
def drawn(monkeypatch) -> list:
    """The figures the plot functions render, kept for inspection (still written to disk)."""
    figures = []
    real_save = plots._save

    def spy(figure, path):
        figures.append(figure)
        return real_save(figure, path)

    monkeypatch.setattr(plots, "_save", spy)
    return figures


def _legend_labels(axes) -> list[str]:
    return [text.get_text() for text in axes.get_legend().get_texts()]


# ----------------------------------------------------------------------------- curves


def test_curves_two_panels_one_line_per_split_epoch_plus_one_accuracy_in_percent(tmp_path, drawn):
    target = tmp_path / "curves.png"
    assert plots.plot_curves(_rows(), target) == target
    assert _png_size(target) == (1100, 420)
    loss_axes, acc_axes = drawn[0].axes[:2]
    assert loss_axes.get_position().x0 < acc_axes.get_position().x0  # loss on the left
    for axes in (loss_axes, acc_axes):
        assert _legend_labels(axes) == ["train", "val"]
    train_loss = loss_axes.lines[0]
    assert list(train_loss.get_xdata()) == [1, 2, 3]
    assert list(train_loss.get_ydata()) == [2.0, 1.0, 0.0]
    assert list(acc_axes.lines[1].get_ydata()) == [40.0, 40.0, 40.0]


def test_curves_skip_missing_values_instead_of_drawing_zero(tmp_path, drawn):
    rows = _rows(4)
    rows[3]["loss"] = math.nan  # val, epoch 1
    rows[3]["acc1"] = None
    del rows[5]["loss"]  # val, epoch 2
    rows[5]["acc1"] = math.inf
    rows.append({"split": "train", "loss": 0.0, "step": 7})  # not an epoch row: ignored
    assert plots.plot_curves(rows, tmp_path / "c.png") is not None
    loss_axes, acc_axes = drawn[0].axes[:2]
    val_loss, val_acc = loss_axes.lines[1], acc_axes.lines[1]
    assert list(val_loss.get_xdata()) == [1, 4]
    assert list(val_acc.get_xdata()) == [1, 4]
    assert 0.0 not in list(val_loss.get_ydata())
    assert list(loss_axes.lines[0].get_xdata()) == [1, 2, 3, 4]


def test_curves_resumed_epoch_keeps_the_last_row_and_orders_splits(tmp_path, drawn):
    rows = [
        {"epoch": 0, "split": "test", "acc1": 0.9},
        {"epoch": 0, "split": "val", "loss": 3.0},
        {"epoch": 0, "split": "val", "loss": 1.0},  # the epoch again, after a resume
        {"epoch": 0, "split": "train", "loss": 2.0},
    ]
    plots.plot_curves(rows, tmp_path / "c.png")
    loss_axes, acc_axes = drawn[0].axes[:2]
    assert _legend_labels(loss_axes) == ["train", "val"]
    assert list(loss_axes.lines[1].get_ydata()) == [1.0]
    assert _legend_labels(acc_axes) == ["test"]
    # A split keeps its colour in both panels.
    assert acc_axes.lines[0].get_color() == "C2"


@pytest.mark.parametrize(
    "rows",
    [
        [],
        [{"epoch": 0, "split": "train"}],
        [{"epoch": 0, "split": "train", "loss": math.nan, "acc1": None}],
        [{"epoch": 0, "split": "val", "loss": float("inf")}, {"split": "val", "loss": 1.0}],
    ],
    ids=["no-rows", "no-values", "nan-and-none", "inf-and-no-epoch"],
)
def test_curves_with_nothing_to_plot_return_none_and_write_nothing(tmp_path, rows):
    assert plots.plot_curves(rows, tmp_path / "sub" / "c.png") is None
    assert not (tmp_path / "sub").exists()


# ----------------------------------------------------------------------------- LR schedule


def test_lr_log_scale_stage_lines_and_literal_group_names(tmp_path, drawn):
    steps = list(range(20))
    lrs = {
        "head": [1e-3] * 20,
        "$x^$": [1e-5] * 20,
        "_stem": [None] * 10 + [1e-5] * 10,  # not trained before the stage at step 10
    }
    target = tmp_path / "lr.png"
    assert lr_plots.plot_lr(steps, lrs, target, stage_starts=[10, 15]) == target
    assert _png_size(target) == (800, 450)
    axes = drawn[0].axes[0]
    assert axes.get_yscale() == "log"
    assert _legend_labels(axes) == ["head", "$x^$", "_stem", "stage start"]
    dashed = [line for line in axes.lines if line.get_linestyle() == "--"]
    assert sorted(line.get_xdata()[0] for line in dashed) == [10, 15]
    assert np.isnan(axes.lines[2].get_ydata()[:10]).all()


@pytest.mark.parametrize(
    "lrs", [{"a": [1e-3, 5e-4]}, {"a": [1e-3, 0.0], "b": [1e-5, 1e-5]}], ids=["narrow", "zero"]
)
def test_lr_linear_scale_when_narrow_or_not_all_positive(tmp_path, drawn, lrs):
    lr_plots.plot_lr([0, 1], lrs, tmp_path / "lr.png")
    assert drawn[0].axes[0].get_yscale() == "linear"


def _legend_outside(axes) -> bool:
    renderer = axes.figure.canvas.get_renderer()
    legend_box = axes.get_legend().get_window_extent(renderer)
    return legend_box.x0 >= axes.get_window_extent(renderer).x1


def test_lr_many_groups_put_the_legend_outside(tmp_path, drawn):
    steps = list(range(5))
    few = {f"group{i}": [1e-3] * 5 for i in range(8)}
    many = {f"layer{i}": [1e-3 * 0.8**i] * 5 for i in range(12)}
    lr_plots.plot_lr(steps, few, tmp_path / "few.png")
    lr_plots.plot_lr(steps, many, tmp_path / "many.png")
    assert not _legend_outside(drawn[0].axes[0])
    assert _legend_outside(drawn[1].axes[0])
    assert len(_legend_labels(drawn[1].axes[0])) == 12
    # Beyond the 10 cycle colours, every group still gets its own colour.
    assert len({tuple(line.get_color()) for line in drawn[1].axes[0].lines}) == 12


def test_lr_with_nothing_to_plot_returns_none(tmp_path):
    target = tmp_path / "lr.png"
    assert lr_plots.plot_lr([], {}, target) is None
    assert lr_plots.plot_lr([0, 1], {}, target) is None
    assert lr_plots.plot_lr([0, 1], {"a": [math.nan, None]}, target) is None
    assert not target.exists()


def test_lr_group_of_the_wrong_length_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"'backbone'.*3 values for 2 steps"):
        lr_plots.plot_lr([0, 1], {"head": [1, 2], "backbone": [1, 2, 3]}, tmp_path / "lr.png")


# ----------------------------------------------------------------------------- confusion


def _diagonal(size: int, hits: int = 9, misses: int = 1) -> list[list[int]]:
    return [[hits if i == j else misses for j in range(size)] for i in range(size)]


def test_confusion_counts_colours_and_names(tmp_path, drawn):
    from matplotlib.colors import to_rgb

    classes = ["cat", "dog", "bird"]
    matrix = [[8, 1, 1], [0, 0, 0], [2, 3, 5]]
    target = tmp_path / "confusion.png"
    assert plots.plot_confusion(matrix, classes, target) == target
    _png_size(target)
    axes = drawn[0].axes[0]
    assert [t.get_text() for t in axes.get_xticklabels()] == classes
    assert [t.get_text() for t in axes.get_yticklabels()] == classes
    cells = {(round(t.get_position()[1]), round(t.get_position()[0])): t for t in axes.texts}
    assert {key: int(t.get_text()) for key, t in cells.items()} == {
        (i, j): matrix[i][j] for i in range(3) for j in range(3)
    }
    assert to_rgb(cells[0, 0].get_color()) == (1.0, 1.0, 1.0)  # 80 % of its row: dark cell
    assert to_rgb(cells[0, 1].get_color()) != (1.0, 1.0, 1.0)
    shares = axes.images[0].get_array()
    assert shares[0, 0] == pytest.approx(0.8)
    assert list(shares[1]) == [0.0, 0.0, 0.0]  # an empty row divides by nothing
    assert axes.get_title() == "Confusion matrix (validation)"


def test_confusion_figure_grows_with_classes_capped_without_names_or_counts(tmp_path, drawn):
    sizes = {}
    for count in (3, 31, 51, 1000):
        target = tmp_path / f"c{count}.png"
        names = [f"class{i}" for i in range(count)]
        plots.plot_confusion(np.eye(count, dtype=np.int64), names, target)
        sizes[count] = _png_size(target)
    assert sizes[31][0] > sizes[3][0]
    assert sizes[31][1] > sizes[3][1]
    assert sizes[1000] == sizes[51]  # past 50 classes the size is fixed
    assert max(sizes[1000]) <= 1200
    axes = {count: figure.axes[0] for count, figure in zip(sizes, drawn, strict=True)}
    assert len(axes[3].texts) == 9  # a count in every cell ...
    assert len(axes[31].texts) == 0  # ... up to 30 classes
    assert len(axes[31].get_xticklabels()) == 31  # the names up to 50 classes, rotated
    assert axes[31].get_xticklabels()[0].get_rotation() == 90
    assert len(axes[1000].get_xticklabels()) == 0
    assert len(axes[1000].get_yticklabels()) == 0
    assert len(axes[1000].texts) == 0


def test_confusion_shortens_long_class_names(tmp_path, drawn):
    long = "a" * 100
    plots.plot_confusion([[1, 0], [0, 1]], [long, "b"], tmp_path / "c.png")
    label = drawn[0].axes[0].get_xticklabels()[0].get_text()
    assert len(label) == 32
    assert label == long[:31] + "…"


@pytest.mark.parametrize(
    ("matrix", "classes", "message"),
    [
        ([[1, 2], [3, 4]], ["a", "b", "c"], "2 rows for 3 classes"),
        ([[1, 2], [3]], ["a", "b"], r"row 1 \('b'\) has 1 columns; expected 2"),
        ([[1, 2, 3], [4, 5, 6]], ["a", "b"], "row 0 .* has 3 columns"),
        ([[1, -2], [3, 4]], ["a", "b"], r"negative count \(-2\) at true 'a', predicted 'b'"),
        ([[1, 2.5], [3, 4]], ["a", "b"], "2.5 at true 'a', predicted 'b'.*whole numbers"),
        ([[1, 2], [math.nan, 4]], ["a", "b"], "nan at true 'b', predicted 'a'"),
        ([["1", "2"], ["3", "4"]], ["a", "b"], "integer counts"),
        ([[True, False], [False, True]], ["a", "b"], "integer counts"),
        ([], [], "no classes"),
    ],
    ids=["rows", "ragged", "wide", "negative", "fraction", "nan", "strings", "bools", "empty"],
)
def test_confusion_invalid_matrix_is_a_data_error(tmp_path, matrix, classes, message):
    target = tmp_path / "c.png"
    with pytest.raises(DataError, match=message):
        plots.plot_confusion(matrix, classes, target)
    assert not target.exists()


def test_confusion_accepts_numpy_and_whole_floats(tmp_path, drawn):
    plots.plot_confusion(np.array([[3.0, 1.0], [0.0, 2.0]]), ("a", "b"), tmp_path / "f.png")
    assert [t.get_text() for t in drawn[0].axes[0].texts] == ["3", "1", "0", "2"]


# ----------------------------------------------------------------------------- LR finder


def _sweep(count: int = 30) -> tuple[list[float], list[float]]:
    """A range test's LRs and losses: a valley at 1e-3 (loss 0.5), then divergence."""
    lrs = list(np.logspace(-6, 0, count))
    losses = [2.0 - 1.5 * math.exp(-((math.log10(lr) + 3) ** 2)) for lr in lrs]
    losses[-1] = 1000.0  # the sweep diverged
    return lrs, losses


def test_lr_finder_log_axis_suggestion_and_cropped_explosion(tmp_path, drawn):
    lrs, losses = _sweep()
    lrs[0], losses[1] = -1.0, math.nan  # points a log axis or a plot cannot show
    target = tmp_path / "finder.png"
    marks = {"steep": 1e-4, "valley": 1e-3}
    assert lr_plots.plot_lr_finder(lrs, losses, target, marks=marks, suggestion="valley") == target
    assert _png_size(target) == (700, 450)
    axes = drawn[0].axes[0]
    assert axes.get_xscale() == "log"
    assert len(axes.lines[0].get_xdata()) == 28
    assert axes.get_ylim()[1] < 10  # the valley stays readable, not flattened by 1000
    dashed = [line for line in axes.lines if line.get_linestyle() == "--"]
    assert [line.get_xdata()[0] for line in dashed] == [1e-4]
    solid = [line for line in axes.lines[1:] if line.get_linestyle() == "-"]
    assert [line.get_xdata()[0] for line in solid] == [1e-3]
    assert solid[0].get_linewidth() > dashed[0].get_linewidth()
    (dot,) = (line for line in axes.lines if line.get_marker() == "o")
    assert dot.get_xdata()[0] == 1e-3
    assert dot.get_ydata()[0] == pytest.approx(0.5, abs=0.05)  # on the curve, at its minimum
    assert _legend_labels(axes) == ["loss", "steep 1.00e-04", "valley 1.00e-03 (suggestion)"]


def test_lr_finder_raw_and_smoothed_the_smoothed_sets_the_y_axis(tmp_path, drawn):
    lrs, smoothed = _sweep()
    raw = [loss + (0.8 if k % 2 else -0.4) for k, loss in enumerate(smoothed)]  # noisy
    smoothed[2] = math.inf  # skipped from both curves
    target = tmp_path / "lr_find.png"
    assert lr_plots.plot_lr_finder(lrs, raw, target, smoothed=smoothed, lr_name="optim.lr")
    axes = drawn[0].axes[0]
    raw_line, smooth_line = axes.lines[:2]
    assert len(raw_line.get_xdata()) == len(smooth_line.get_xdata()) == 29
    assert raw_line.get_alpha() < 1  # the raw loss is faint, the smoothed one opaque
    assert smooth_line.get_alpha() in (None, 1)
    low, high = axes.get_ylim()
    assert low < 0.5 < high < 10  # from the smoothed loss: its valley, not the raw noise
    assert low > min(raw)
    assert axes.get_xlabel() == "optim.lr (log scale)"
    assert _legend_labels(axes) == ["loss", "smoothed loss"]


def test_lr_finder_without_drawable_points_returns_none(tmp_path):
    target = tmp_path / "finder.png"
    assert lr_plots.plot_lr_finder([], [], target) is None
    assert lr_plots.plot_lr_finder([0.0, -1.0, 1e-3], [1.0, 1.0, math.nan], target) is None
    assert (
        lr_plots.plot_lr_finder([1e-3, 1e-2], [1.0, 0.5], target, smoothed=[math.nan] * 2) is None
    )
    assert not target.exists()


@pytest.mark.parametrize(
    ("lrs", "losses", "smoothed", "marks", "suggestion", "message"),
    [
        ([1e-3, 1e-2], [1.0], None, {}, None, "2 learning rates for 1 losses"),
        ([1e-3, 1e-2], [1.0, 0.5], [1.0], {}, None, "2 learning rates for 1 losses"),
        ([1e-3, 1e-2], [1.0, 0.5], None, {"a": 0.0}, "a", "marked 'a' must be a positive"),
        ([1e-3, 1e-2], [1.0, 0.5], None, {"a": math.nan}, None, "marked 'a' must be a positive"),
        ([1e-3, 1e-2], [1.0, 0.5], None, {"a": 1e-3}, "b", "suggestion 'b' is not a marked LR"),
        ([], [], None, {}, "b", "suggestion 'b' is not a marked LR"),  # even with no point
    ],
)
def test_lr_finder_bad_input_is_a_data_error(
    tmp_path, lrs, losses, smoothed, marks, suggestion, message
):
    target = tmp_path / "f.png"
    with pytest.raises(DataError, match=message):
        lr_plots.plot_lr_finder(
            lrs, losses, target, smoothed=smoothed, marks=marks, suggestion=suggestion
        )
    assert not target.exists()


# ----------------------------------------------------------------------------- user text


def test_names_mathtext_would_reject_are_drawn_literally(tmp_path, drawn):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    for name in BAD_MATH:  # the premise: drawn as ordinary text, these names raise
        figure = Figure()
        FigureCanvasAgg(figure)
        figure.text(0.5, 0.5, name)
        with pytest.raises(ValueError, match="Parse"):
            figure.savefig(io.BytesIO(), format="png")

    plots.plot_confusion(_diagonal(len(ODD_NAMES)), ODD_NAMES, tmp_path / "c.png", title="$x^$")
    lr_plots.plot_lr([0, 1], {name: [1e-3, 1e-4] for name in ODD_NAMES}, tmp_path / "lr.png")
    plots.plot_curves([{"epoch": 0, "split": BAD_MATH[0], "loss": 1.0}], tmp_path / "cu.png")
    confusion, schedule, curves = (figure.axes[0] for figure in drawn)
    assert [t.get_text() for t in confusion.get_yticklabels()] == ODD_NAMES
    assert confusion.get_title() == "$x^$"
    assert _legend_labels(schedule) == ODD_NAMES  # "_private" too, not dropped
    assert _legend_labels(curves) == BAD_MATH[:1]
    for name in ("c.png", "lr.png", "cu.png"):
        _png_size(tmp_path / name)


# ----------------------------------------------------------------------------- files

PLOTTERS = {
    "curves": lambda path: plots.plot_curves(_rows(), path),
    "lr": lambda path: lr_plots.plot_lr([0, 1], {"head": [1e-3, 1e-4]}, path, stage_starts=[1]),
    "confusion": lambda path: plots.plot_confusion([[1, 0], [0, 1]], ["a", "b"], path),
    "finder": lambda path: lr_plots.plot_lr_finder(
        [1e-4, 1e-3], [1.0, 0.5], path, smoothed=[1.0, 0.7], marks={"s": 3e-4}, suggestion="s"
    ),
}


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    import torchgraft.atomic

    target = tmp_path / "confusion.png"
    target.write_bytes(b"the old image")

    def refuse(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torchgraft.atomic.os, "replace", refuse)
    with pytest.raises(OSError, match="disk full"):
        PLOTTERS["confusion"](target)
    assert target.read_bytes() == b"the old image"
    assert _litter(tmp_path) == []


def test_failed_rendering_touches_neither_file_nor_folders(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken)
    existing = tmp_path / "curves.png"
    existing.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="renderer crashed"):
        PLOTTERS["curves"](existing)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        PLOTTERS["lr"](tmp_path / "new" / "lr.png")
    assert existing.read_bytes() == b"old"
    assert not (tmp_path / "new").exists()


# ----------------------------------------------------------------------------- matplotlib state


def test_importing_the_module_does_not_import_matplotlib():
    script = "import sys, torchgraft.engine.report.plots; print('matplotlib' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


def test_every_plot_makes_folders_leaves_no_litter_no_open_figure_no_rc_change(tmp_path):
    import matplotlib
    from matplotlib._pylab_helpers import Gcf

    had_pyplot = "matplotlib.pyplot" in sys.modules  # another test file may use pyplot
    open_figures = Gcf.get_num_fig_managers()
    matplotlib.rcParams["lines.linewidth"] = 3.0  # a user's own setting stays theirs
    before = matplotlib.rcParams.copy()
    folder = tmp_path / "run" / "plots" / "deep"  # does not exist yet
    for kind, plot in PLOTTERS.items():
        target = folder / f"{kind}.png"
        assert plot(str(target)) == target, kind
        _png_size(target)
    assert sorted(p.name for p in folder.iterdir()) == sorted(f"{k}.png" for k in PLOTTERS)
    assert matplotlib.rcParams.copy() == before
    assert Gcf.get_num_fig_managers() == open_figures
    assert had_pyplot or "matplotlib.pyplot" not in sys.modules


def test_missing_matplotlib_is_a_clear_import_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    with pytest.raises(ImportError, match="pip install matplotlib"):
        PLOTTERS["curves"](tmp_path / "c.png")
