"""Run-directory plots: loss and accuracy curves, confusion matrix, and the figure helpers
every plot shares (the LR schedule and the LR finder's curve are in :mod:`.lr_plots`).

Contract, for the plots here and in :mod:`.lr_plots`:

* Every function renders one PNG and writes it atomically
  (:func:`~torchgraft.atomic.atomic_write_bytes`): the destination holds either its old
  content or the complete new image, never a half-written file. Missing parent folders are
  created (only once the image has rendered). ``path`` may instead be a binary file object
  (``io.BytesIO``): the PNG bytes are written into it, nothing touches the disk, and the
  object is returned (``report.html`` embeds the figures this way).
* Rendering uses matplotlib's object-oriented API (``Figure`` + ``FigureCanvasAgg``), never
  ``pyplot``: no GUI backend is chosen, the user's backend and global ``rcParams`` are left
  alone, no figure stays registered anywhere, and two threads may plot at the same time.
* matplotlib (and numpy) are imported inside the functions, so importing this module is
  cheap; matplotlib is only needed when a plot is drawn.
* Strings that come from users' data (class names, optimizer group names, split names,
  titles) are drawn literally: ``$x^2$``, ``a_b`` or ``\\foo`` never go through mathtext or
  LaTeX, so they cannot raise and print as written. They are drawn escaped
  (:func:`torchgraft.text.printable`: ESC as ``\\x1b``, as a terminal shows them): no font
  has glyphs for control characters, and matplotlib's "Glyph 27 (…) missing from font(s)"
  warning would carry the raw character to the terminal. A printable character the font
  lacks (a CJK name in DejaVu Sans) is still drawn as a box, and its warning names it in
  ASCII (``\\N{CJK UNIFIED IDEOGRAPH-732B}``).
* Missing values (``None``, NaN, infinities, absent keys) are skipped, never drawn as zero.
  A function that has nothing to draw returns ``None`` and writes nothing.
"""

from __future__ import annotations

import io
import math
import numbers
import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from ...atomic import atomic_write_bytes
from ...errors import DataError
from ...text import printable

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure
    from matplotlib.text import Text

__all__ = ["plot_confusion", "plot_curves"]

_DPI = 100
#: Known splits first, in this order and with these colours, so every plot of every run
#: agrees on which colour is which split.
_SPLIT_COLORS = {"train": "C0", "val": "C1", "test": "C2"}
#: Up to this many classes the confusion matrix shows counts in its cells.
_MAX_COUNTS = 30
#: Up to this many classes the confusion matrix shows class names on its axes.
_MAX_TICK_LABELS = 50
#: Class names longer than this are shortened on the axes (the image stays readable).
_MAX_NAME_CHARS = 32


# ----------------------------------------------------------------------------- helpers


def _new_figure(width: float, height: float) -> Figure:
    """A figure bound to the Agg canvas, outside pyplot (nothing global is registered)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # matplotlib is optional for everything else in torchgraft
        raise ImportError(
            "torchgraft's plots need matplotlib, which is not installed: pip install matplotlib"
        ) from error
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def _save(figure: Figure, path: str | os.PathLike[str] | BinaryIO) -> Any:
    """Render ``figure`` to PNG bytes, then write them atomically to ``path`` (or into it,
    when it is a binary file object)."""
    buffer = io.BytesIO()
    # Render before touching the disk: a drawing error leaves neither a file nor new folders.
    figure.savefig(buffer, format="png", dpi=_DPI)
    if hasattr(path, "write"):
        path.write(buffer.getvalue())
        return path
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write_bytes(target, buffer.getvalue())


def _literal(texts: Iterable[Text]) -> None:
    """Draw these texts as written — no mathtext, no LaTeX — and escaped (their strings are
    users' data; see the module docstring). Escaping twice changes nothing."""
    for text in texts:
        text.set_text(printable(text.get_text()))
        text.set_parse_math(False)
        text.set_usetex(False)


def _finite(value: Any) -> float | None:
    """``value`` as a float, or None when it is missing, not a number, NaN or infinite."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _legend(axes: Axes, handles: list[Any], labels: list[str], **kwargs: Any) -> None:
    # Explicit handles and labels: a label starting with "_" (a group named "_head") would
    # otherwise be dropped from the legend silently.
    legend = axes.legend(handles, labels, **kwargs)
    _literal(legend.get_texts())


# ----------------------------------------------------------------------------- curves


def _series(rows: Sequence[Mapping[str, Any]], key: str, scale: float) -> dict[str, list]:
    """``{split: [(epoch + 1, value * scale), ...]}`` sorted by epoch, finite values only."""
    found: dict[str, dict[int, float]] = {}
    for row in rows:
        epoch, split = row.get("epoch"), row.get("split")
        if isinstance(epoch, bool) or not isinstance(epoch, numbers.Integral):
            continue  # not an epoch row (the log may hold other kinds of rows)
        if not isinstance(split, str):
            continue
        value = _finite(row.get(key))
        if value is not None:
            # A resumed run repeats the epoch it was interrupted in: the last row wins.
            found.setdefault(split, {})[int(epoch) + 1] = value * scale
    return {split: sorted(points.items()) for split, points in found.items()}


def _split_order(*series: Mapping[str, Any]) -> list[str]:
    seen = list(dict.fromkeys(split for s in series for split in s))
    return [s for s in _SPLIT_COLORS if s in seen] + [s for s in seen if s not in _SPLIT_COLORS]


def _draw_curves(axes: Axes, series: dict[str, list], splits: list[str], ylabel: str) -> None:
    from matplotlib.ticker import MaxNLocator

    handles, labels = [], []
    for index, split in enumerate(splits):
        points = series.get(split)
        if not points:
            continue
        xs, ys = zip(*points, strict=True)
        color = _SPLIT_COLORS.get(split, f"C{(index + 3) % 10}")
        # Markers keep a single epoch (or an isolated value) visible; dense runs skip them.
        marker = "o" if len(points) <= 40 else None
        (line,) = axes.plot(xs, ys, color=color, marker=marker, markersize=3)
        handles.append(line)
        labels.append(split)
    axes.set_xlabel("epoch")
    axes.set_ylabel(ylabel)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.grid(alpha=0.3)
    if handles:
        _legend(axes, handles, labels)
    else:
        axes.text(0.5, 0.5, "nothing recorded", ha="center", va="center", transform=axes.transAxes)


def plot_curves(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Loss and top-1 accuracy per epoch: one PNG, loss on the left, accuracy on the right.

    One line per split (train, val, test, then any other split in order of appearance),
    with the same colour in both panels. The x axis is ``epoch + 1``. Values that are
    missing, ``None``, NaN or infinite are skipped (the line joins its neighbours); rows
    without an integer ``epoch`` or a string ``split`` are ignored; when a split has two
    rows for one epoch (a resumed run), the later row wins.

    Args:
        rows: metrics rows as the engine writes them to ``metrics.jsonl``: ``epoch``
            (0-based int), ``split`` (``"train"``, ``"val"``, ``"test"``), optionally
            ``loss`` (float) and ``acc1`` (fraction in [0, 1], drawn in percent).
        path: the PNG to write; missing parent folders are created.

    Returns:
        ``path`` as a :class:`~pathlib.Path`, or ``None`` (nothing written) when no row
        holds a finite loss or accuracy.

    Raises:
        ImportError: matplotlib is not installed.
        OSError: the file cannot be written; an existing file keeps its old content.
    """
    losses = _series(rows, "loss", 1.0)
    accuracies = _series(rows, "acc1", 100.0)
    if not losses and not accuracies:
        return None
    splits = _split_order(losses, accuracies)
    figure = _new_figure(11.0, 4.2)
    loss_axes, acc_axes = figure.subplots(1, 2)
    _draw_curves(loss_axes, losses, splits, "loss")
    loss_axes.set_title("Loss")
    _draw_curves(acc_axes, accuracies, splits, "top-1 accuracy (%)")
    acc_axes.set_title("Top-1 accuracy")
    return _save(figure, path)


# ----------------------------------------------------------------------------- confusion


def _counts(matrix: Sequence[Sequence[int]], classes: Sequence[str]) -> Any:
    """``matrix`` as a square int64 numpy array; DataError naming what is wrong."""
    import numpy as np

    size = len(classes)
    if size == 0:
        raise DataError("confusion matrix: no classes given")
    if len(matrix) != size:
        raise DataError(f"confusion matrix has {len(matrix)} rows for {size} classes")
    for index, row in enumerate(matrix):
        if not hasattr(row, "__len__"):
            raise DataError(f"confusion matrix row {index} is {row!r}, not a row of counts")
        if len(row) != size:
            raise DataError(
                f"confusion matrix row {index} ({classes[index]!r}) has {len(row)} "
                f"columns; expected {size}, one per class (the matrix must be square)"
            )
    try:
        array = np.asarray(matrix)
    except (TypeError, ValueError, RuntimeError) as error:
        raise DataError(f"confusion matrix cannot be read as numbers: {error}") from error
    if array.dtype.kind == "f":
        bad = ~np.isfinite(array) | (array != np.round(array))
    elif array.dtype.kind in "iu":
        bad = np.zeros(array.shape, dtype=bool)
    else:
        raise DataError(f"confusion matrix must hold integer counts, not {array.dtype} values")
    if bad.any():
        row, column = (int(i) for i in np.argwhere(bad)[0])
        raise DataError(
            f"confusion matrix holds {array[row, column].item()!r} at true {classes[row]!r}, "
            f"predicted {classes[column]!r}; counts must be whole numbers"
        )
    if (array < 0).any():
        row, column = (int(i) for i in np.argwhere(array < 0)[0])
        raise DataError(
            f"confusion matrix holds a negative count ({array[row, column]}) at true "
            f"{classes[row]!r}, predicted {classes[column]!r}"
        )
    return array.astype(np.int64)


def _confusion_size(count: int) -> float:
    """Figure side in inches: grows with the classes, capped (1000 classes stay 10 inches)."""
    if count > _MAX_TICK_LABELS:
        return 10.0
    return min(max(4.5, 2.5 + 0.32 * count), 18.0)


def _short(name: str) -> str:
    return name if len(name) <= _MAX_NAME_CHARS else name[: _MAX_NAME_CHARS - 1] + "…"


def _label_axes(axes: Axes, names: list[str]) -> None:
    """Class names on both axes; none at all when there are too many to read."""
    ticks = range(len(names))
    if len(names) > _MAX_TICK_LABELS:
        axes.set_xticks([])
        axes.set_yticks([])
        return
    size = 9 if len(names) <= 20 else 7
    # Rotation keeps long or numerous names from running into each other.
    rotation = 90 if len(names) > 10 or max(map(len, names)) > 4 else 0
    axes.set_xticks(ticks, labels=names, rotation=rotation, fontsize=size)
    axes.set_yticks(ticks, labels=names, fontsize=size)
    _literal(axes.get_xticklabels() + axes.get_yticklabels())


def _write_counts(axes: Axes, counts: Any, shares: Any, side: float) -> None:
    # Font sized to the cell (the axes take about 3/4 of the figure's side), so that
    # three-digit counts still fit in a 30-class matrix.
    cell_points = 0.75 * side * 72 / len(counts)
    size = max(5.0, min(11.0, 0.4 * cell_points))
    for row, values in enumerate(counts.tolist()):
        for column, count in enumerate(values):
            color = "white" if shares[row, column] > 0.5 else "0.15"
            text = axes.text(
                column, row, str(count), ha="center", va="center", color=color, fontsize=size
            )
            # Inside the axes by construction; leaving them out of the layout saves
            # measuring up to 900 texts several times per render.
            text.set_in_layout(False)


def plot_confusion(
    matrix: Sequence[Sequence[int]],
    classes: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "Confusion matrix (validation)",
) -> Path:
    """A confusion matrix: rows are the true class, columns the predicted class.

    The colour of a cell is its share of the true class's row (rows sum to 1; an empty row
    stays blank). Up to 30 classes each cell shows its count (white on dark cells, dark on
    light); up to 50 classes both axes show the class names (shortened past 32 characters,
    x labels rotated when long or numerous). The figure grows with the number of classes,
    up to a cap; past 50 classes it is a fixed 10 inches with neither names nor counts.

    Args:
        matrix: ``len(classes)`` rows of ``len(classes)`` non-negative integer counts
            (lists, a numpy array or a CPU tensor).
        classes: class names, in the order of the rows and columns.
        path: the PNG to write; missing parent folders are created.
        title: the title above the matrix.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: no classes, a matrix that is not square with one row per class, or a
            count that is negative or not a whole number.
        ImportError: matplotlib is not installed.
        OSError: the file cannot be written; an existing file keeps its old content.
    """
    import numpy as np

    counts = _counts(matrix, classes)
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros(counts.shape), where=totals > 0)
    side = _confusion_size(len(classes))
    figure = _new_figure(side + 1.2, side)  # the extra width holds the colour bar
    axes = figure.subplots()
    # Sharp cells while each class gets several pixels; past that, averaging pixels keeps
    # every row visible (nearest-neighbour downsampling would silently drop some classes).
    smooth = "antialiased" if len(classes) > _MAX_TICK_LABELS else "nearest"
    image = axes.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0, interpolation=smooth)
    figure.colorbar(image, ax=axes, shrink=0.8, label="share of the true class")
    _label_axes(axes, [_short(printable(name)) for name in classes])  # shortened as shown
    if len(classes) <= _MAX_COUNTS:
        _write_counts(axes, counts, shares, side)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    _literal([axes.set_title(str(title))])
    return _save(figure, path)
