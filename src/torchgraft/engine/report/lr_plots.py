"""Run-directory plots of the learning rate: the LR schedule and the LR finder's curve.

In: a run's LRs per optimizer group and step (:func:`plot_lr`), or an LR range test's LRs,
losses and marked LRs (:func:`plot_lr_finder`). Out: one PNG each, written or returned as
:mod:`.plots` writes its figures, under the same contract (atomic writes or a binary file
object, no pyplot, matplotlib imported only when drawing, users' strings drawn literally and
escaped, missing values skipped, ``None`` when there is nothing to draw).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...errors import DataError

# Figures are saved through ``plots._save``, looked up when a plot is drawn: every figure of a
# run passes through that one function, where a test can watch them all.
from . import plots
from .plots import _finite, _legend, _literal, _new_figure

if TYPE_CHECKING:
    from matplotlib.axes import Axes

__all__ = ["plot_lr", "plot_lr_finder"]

#: Up to this many optimizer groups the legend sits inside the axes.
_MAX_INLINE_LEGEND = 8


# ----------------------------------------------------------------------------- LR schedule


def _lr_series(steps: Sequence[int], lrs: Mapping[str, Sequence[float]]) -> dict[str, list]:
    """Each group's LRs as floats (NaN where missing); DataError when a length is wrong."""
    series = {}
    for name, values in lrs.items():
        if len(values) != len(steps):
            raise DataError(
                f"learning rates of group {name!r}: {len(values)} values for {len(steps)} "
                "steps; give one LR per step"
            )
        series[str(name)] = [math.nan if (v := _finite(x)) is None else v for x in values]
    return series


def _use_log_scale(series: Mapping[str, list]) -> bool:
    values = [v for vs in series.values() for v in vs if not math.isnan(v)]
    return bool(values) and min(values) > 0 and max(values) > 10 * min(values)


def _lr_colors(count: int) -> list[Any]:
    if count <= 10:
        return [f"C{i}" for i in range(count)]
    from matplotlib import colormaps

    # More groups than the default cycle has colours: a gradient, which also suits the
    # usual case of many groups (layer-wise LR decay, ordered from the stem to the head).
    cmap = colormaps["viridis"]
    return [cmap(i / (count - 1)) for i in range(count)]


def _draw_lr_lines(
    axes: Axes, steps: Sequence[int], series: Mapping[str, list], stage_starts: Sequence[int]
) -> tuple[list[Any], list[str]]:
    """One line per group and a dashed line per stage start; the legend's handles, labels."""
    handles, labels = [], []
    for (name, values), color in zip(series.items(), _lr_colors(len(series)), strict=True):
        (line,) = axes.plot(list(steps), values, color=color, linewidth=1.2)
        handles.append(line)
        labels.append(name)
    for index, start in enumerate(stage_starts):
        line = axes.axvline(start, color="0.4", linestyle="--", linewidth=0.9)
        if index == 0:  # one legend entry for all of them
            handles.append(line)
            labels.append("stage start")
    return handles, labels


def plot_lr(
    steps: Sequence[int],
    lrs: Mapping[str, Sequence[float]],
    path: str | os.PathLike[str],
    *,
    stage_starts: Sequence[int] = (),
) -> Path | None:
    """The learning-rate schedule: one line per optimizer group, against the step.

    The y axis is logarithmic when every LR is positive and they span more than a factor
    of 10. Each step in ``stage_starts`` (where an unfreezing stage began) gets a dashed
    vertical line. With more than 8 groups the legend moves outside the axes, in small
    type and as many columns as it needs, so it never covers the lines.

    Args:
        steps: the optimizer steps (x values).
        lrs: group name -> LR at each step, each as long as ``steps``. Missing values
            (``None``, NaN) are skipped; a group that is not trained yet can hold them.
        path: the PNG to write; missing parent folders are created.
        stage_starts: steps where an unfreezing stage began.

    Returns:
        ``path`` as a :class:`~pathlib.Path`, or ``None`` (nothing written) when there is no
        step, no group or no finite LR.

    Raises:
        DataError: a group does not hold exactly one LR per step.
        ImportError: matplotlib is not installed.
        OSError: the file cannot be written; an existing file keeps its old content.
    """
    series = _lr_series(steps, lrs)
    if len(steps) == 0 or not any(not math.isnan(v) for vs in series.values() for v in vs):
        return None
    many = len(series) > _MAX_INLINE_LEGEND
    figure = _new_figure(11.0 if many else 8.0, 4.5)
    axes = figure.subplots()
    handles, labels = _draw_lr_lines(axes, steps, series, stage_starts)
    if _use_log_scale(series):
        axes.set_yscale("log")
    axes.set(xlabel="step", ylabel="learning rate", title="Learning-rate schedule")
    axes.grid(alpha=0.3)
    if many:
        # Outside the axes, to the right (constrained layout makes room), in columns of
        # at most 24 entries: 100 layer-wise groups stay readable and cover no line.
        columns = math.ceil(len(handles) / 24)
        placement = {"loc": "upper left", "bbox_to_anchor": (1.01, 1.0), "borderaxespad": 0.0}
        _legend(axes, handles, labels, fontsize="x-small", ncols=columns, **placement)
    else:
        _legend(axes, handles, labels, fontsize="small")
    return plots._save(figure, path)


# ----------------------------------------------------------------------------- LR finder


def _finder_points(lrs: Sequence[float], *curves: Sequence[float]) -> list[tuple[float, ...]]:
    """``(lr, value of each curve)`` where every one is finite and the LR positive."""
    for curve in curves:
        if len(curve) != len(lrs):
            raise DataError(f"LR finder: {len(lrs)} learning rates for {len(curve)} losses")
    points = []
    for values in zip(lrs, *curves, strict=True):
        point = tuple(_finite(value) for value in values)
        # A log axis cannot show lr <= 0; a point missing from one curve leaves both.
        if None not in point and point[0] > 0:
            points.append(point)
    return points


def _finder_ylim(ys: Sequence[float]) -> tuple[float, float]:
    """Loss range to show: an exploding tail is cut off so the valley stays readable."""
    low, high, first = min(ys), max(ys), ys[0]
    if first > low:
        high = min(high, first + 2 * (first - low))
    margin = 0.05 * (high - low) or 0.05 * abs(high) or 0.05
    return low - margin, high + margin


def _finder_marks(marks: Mapping[str, float], suggestion: str | None) -> dict[str, float]:
    """``marks`` as floats; DataError for an LR a log axis cannot show or an unknown
    suggestion."""
    checked = {}
    for label, lr in marks.items():
        value = _finite(lr)
        if value is None or value <= 0:
            raise DataError(
                f"LR finder: the LR marked {label!r} must be a positive number, not {lr!r}"
            )
        checked[str(label)] = value
    if suggestion is not None and suggestion not in checked:
        known = ", ".join(map(repr, checked)) or "none"
        raise DataError(
            f"LR finder: the suggestion {suggestion!r} is not a marked LR (marked: {known}); "
            "name one of the keys of marks"
        )
    return checked


def _draw_marks(
    axes: Axes, marks: Mapping[str, float], suggestion: str | None, xs: list, ys: list
) -> tuple[list[Any], list[str]]:
    """A vertical line at each marked LR, dashed, and solid with a dot on the curve for the
    suggestion; the legend's handles and labels."""
    import numpy as np

    handles, labels = [], []
    for number, (label, lr) in enumerate(marks.items(), start=1):
        chosen = label == suggestion
        color = f"C{number % 10}"
        line = axes.axvline(
            lr, color=color, linestyle="-" if chosen else "--", linewidth=1.6 if chosen else 1.0
        )
        handles.append(line)
        labels.append(f"{label} {lr:.2e}" + (" (suggestion)" if chosen else ""))
        if chosen:  # where the suggestion sits on the curve
            order = np.argsort(xs)
            at = float(np.interp(np.log(lr), np.log(xs)[order], np.asarray(ys)[order]))
            axes.plot([lr], [at], "o", color=color, markersize=6)
    return handles, labels


def plot_lr_finder(
    lrs: Sequence[float],
    losses: Sequence[float],
    path: str | os.PathLike[str],
    *,
    smoothed: Sequence[float] | None = None,
    marks: Mapping[str, float] | None = None,
    suggestion: str | None = None,
    lr_name: str = "learning rate",
) -> Path | None:
    """The LR range test's curve: loss against learning rate, on a logarithmic LR axis.

    With ``smoothed``, the raw loss is drawn faint and the smoothed loss over it, and the
    y axis follows the smoothed loss. Each marked LR gets a dashed vertical line, named in
    the legend with its value; the one named by ``suggestion`` gets a solid, thicker line
    and a dot on the curve. Points whose LR is not positive, or whose LR or any loss is
    missing or not finite, are skipped. When the loss explodes at the end of the sweep the
    y axis stops at the first loss plus twice its drop, so the valley is not flattened.

    Args:
        lrs: the learning rates tried, in sweep order.
        losses: the loss at each of them (the raw loss when ``smoothed`` is given).
        path: the PNG to write; missing parent folders are created.
        smoothed: the smoothed loss at each LR, drawn over the raw one.
        marks: label -> LR to mark (a rule's name and its LR), in legend order.
        suggestion: the label in ``marks`` whose LR is the suggestion.
        lr_name: what the LR axis is called (``optim.lr`` for a run's range test).

    Returns:
        ``path`` as a :class:`~pathlib.Path`, or ``None`` (nothing written) when no point
        can be drawn.

    Raises:
        DataError: a curve's length differs from ``lrs``, a marked LR is not a positive
            finite number, or ``suggestion`` names no mark.
        ImportError: matplotlib is not installed.
        OSError: the file cannot be written; an existing file keeps its old content.

    Example:
        >>> plot_lr_finder(lrs, losses, "lr_find.png", smoothed=smoothed,
        ...                marks={"steep": 3e-3, "valley": 1e-3}, suggestion="valley")
    """
    curves = [losses] if smoothed is None else [losses, smoothed]
    points = _finder_points(lrs, *curves)
    checked = _finder_marks(marks or {}, suggestion)
    if not points:
        return None
    xs, *ys = (list(v) for v in zip(*points, strict=True))
    figure = _new_figure(7.0, 4.5)
    axes = figure.subplots()
    marker = "o" if len(xs) == 1 else None
    handles = [axes.plot(xs, ys[0], color="C0", marker=marker, markersize=3)[0]]
    labels = ["loss"]
    if smoothed is not None:
        handles[0].set(alpha=0.25, linewidth=0.8)
        handles += axes.plot(xs, ys[1], color="C0", marker=marker, markersize=3)
        labels.append("smoothed loss")
    axes.set_xscale("log")
    axes.set_ylim(*_finder_ylim(ys[-1]))
    mark_handles, mark_labels = _draw_marks(axes, checked, suggestion, xs, ys[-1])
    axes.set(xlabel=f"{lr_name} (log scale)", ylabel="training loss", title="LR range test")
    _literal([axes.xaxis.label])
    axes.grid(alpha=0.3)
    _legend(axes, handles + mark_handles, labels + mark_labels, loc="best", fontsize="small")
    return plots._save(figure, path)
