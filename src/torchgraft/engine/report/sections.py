"""The report's sections built from a run's files: at a glance, curves, confusion.

Each function takes :class:`~.files.RunFiles` and returns a
:class:`~.html.Section`; a file the section needs that is missing or damaged becomes a
sentence in the section saying so. The figures are :mod:`.plots`' own, rendered into memory
(see :func:`figure`). The graft, the image sections (misclassified and least confident
correct validation images) and the freeze/groups summary have modules of their own.
"""

from __future__ import annotations

import datetime
import io
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from .files import RunFiles, as_map
from .html import Html, Section, definitions, details, items, join, note, png, table

__all__ = [
    "Figures",
    "confusion_section",
    "curves_section",
    "figure",
    "glance_section",
]

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
#: Most classes listed by name at a glance; most rows of the per-class and per-epoch tables.
_MAX_NAMED_CLASSES = 30
_MAX_ROWS = 500


def _pct(value: Any) -> str:
    return f"{value:.2%}" if _number(value) else "–"


def _num(value: Any, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if _number(value) else "–"


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _problem(files: RunFiles, name: str, what: str) -> Html:
    return note(f"{what}: {name} {files.problems.get(name, 'not found')}.")


# ----------------------------------------------------------------------------- at a glance


def glance_section(files: RunFiles) -> Section:
    """Model, weights, data, classes, best and last metrics, time, and what is missing."""
    rows: list[tuple[str, object]] = [("model", files.section("model", "name", "?"))]
    weights = files.section("weights", "source")
    rows.append(("weights", weights or "none (random initialisation)"))
    if files.graft:
        rows.append(("graft", _graft_line(files.graft)))
    rows.append(("data", _data_line(files)))
    classes = files.classes
    shown = ", ".join(classes[:_MAX_NAMED_CLASSES])
    more = (
        f", … {len(classes) - _MAX_NAMED_CLASSES} more" if len(classes) > _MAX_NAMED_CLASSES else ""
    )
    rows.append(("classes", f"{len(classes)}: {shown}{more}" if classes else "unknown"))
    vals = files.val_rows()
    best_epoch = files.best_epoch()
    best = next((r for r in vals if r["epoch"] == best_epoch), None)
    if best is not None:
        rows.append((f"best (epoch {best_epoch + 1})", _scores(best)))
    if vals:
        rows.append((f"last (epoch {vals[-1]['epoch'] + 1})", _scores(vals[-1])))
    if files.test:
        rows.append(("test (best model)", _scores(files.test)))
    configured = files.section("train", "epochs")
    rows.append(("epochs", f"{len(vals)} of {configured}" if configured else str(len(vals))))
    seconds = sum(r["seconds"] for r in files.rows if _number(r.get("seconds")))
    rows.append(("training time", f"{seconds:,.1f} s (sum of the epochs)"))
    if files.bad:
        rows.append(("left out", f"{len(files.bad)} unreadable image file(s): bad_images.txt"))
    rows.append(("run directory", str(files.path)))
    stamp = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    rows.append(("report written", stamp))
    body = definitions(rows)
    # No graft.json is the normal case of a run without weights; anything else is worth a line.
    expected = files.problems.get("graft.json") == "not found" and not weights
    problems = {k: v for k, v in files.problems.items() if not (k == "graft.json" and expected)}
    if problems:
        listed = items(f"{name}: {why}" for name, why in problems.items())
        body = Html(body + "<h3>Files missing or unreadable</h3>" + listed)
    return Section("glance", "The run at a glance", body)


def _graft_line(graft: Mapping[str, Any]) -> str:
    from ...grafting.graft_plan import percent
    from .graft import WORDS

    coverage = graft.get("coverage")
    counts = as_map(graft.get("counts"))
    done = ", ".join(
        f"{WORDS.get(k, k)} {v}" for k, v in counts.items() if isinstance(v, int) and v
    )
    share = percent(coverage) if _number(coverage) else "?"
    return f"{share} of parameter elements loaded ({graft.get('strategy', '?')}): {done}"


def _data_line(files: RunFiles) -> str:
    shape = as_map(as_map(files.model).get("preprocessing")).get("input_size")
    text = str(files.section("data", "source", "?"))
    if isinstance(shape, list):
        text += f" · input {'×'.join(map(str, shape))}"
    vals = files.val_rows()
    if vals and _number(vals[-1].get("count")):
        text += f" · {vals[-1]['count']:,} validation images"
    return text


def _scores(row: Mapping[str, Any]) -> str:
    parts = [f"top-1 {_pct(row.get('acc1'))}"]
    if _number(row.get("acc5")):
        parts.append(f"top-5 {_pct(row['acc5'])}")
    if _number(row.get("f1")):
        parts.append(f"macro F1 {_pct(row['f1'])}")
    parts.append(f"loss {_num(row.get('loss'))}")
    return " · ".join(parts)


# ----------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Figures:
    """Which of :mod:`.plots`' figures the page draws.

    Attributes:
        on: False when the run's ``output.plots`` is off (nothing is drawn).
        refresh: the refresh after an epoch: only the loss and accuracy curves are drawn (the
            figure worth watching during a run); the LR schedule and the confusion matrix
            are drawn at the end, each about as costly as the curves.
    """

    on: bool = True
    refresh: bool = False

    def draws(self, name: str) -> bool:
        return self.on and (not self.refresh or name == "curves.png")


def figure(files: RunFiles, name: str, draw: Callable[[io.BytesIO], Any] | None) -> bytes | None:
    """PNG bytes of one of :mod:`.plots`' figures: ``draw(buffer)`` renders it into memory.

    The end of ``train`` has just written the same figure as ``name`` from the same rows; a
    file not older than ``metrics.jsonl`` is therefore current and is embedded instead of
    being drawn a second time. Returns None when there is nothing to draw (or ``draw`` is
    None and no current file exists).
    """
    on_disk, metrics = files.path / name, files.path / "metrics.jsonl"
    try:
        if on_disk.stat().st_mtime_ns >= metrics.stat().st_mtime_ns:
            data = on_disk.read_bytes()
            if data.startswith(_PNG_MAGIC):
                return data
    except OSError:
        pass
    if draw is None:
        return None
    buffer = io.BytesIO()
    return buffer.getvalue() if draw(buffer) is not None else None


def _figure_or_note(files: RunFiles, name: str, draw, alt: str, figures: Figures) -> Html:
    if not figures.on:
        return note(
            f"{alt}: not drawn, figures are off for this run (output.plots: false); "
            f"torchgraft report {files.path} --plots draws them."
        )
    from ...errors import TorchgraftError

    try:
        data = figure(files, name, draw if figures.draws(name) else None)
    except ImportError as exc:
        return note(f"{alt}: not drawn ({exc}).")
    except TorchgraftError as exc:
        return note(f"{alt}: cannot be drawn from the recorded values ({exc}).")
    if data:
        return png(data, alt)
    if not figures.draws(name):
        return note(f"{alt}: drawn at the end of training (and by torchgraft report).")
    return note(f"{alt}: nothing recorded yet.")


# ----------------------------------------------------------------------------- curves


def curves_section(files: RunFiles, figures: Figures) -> Section:
    """Loss and accuracy per epoch, the LR schedule per step, and the numbers as a table."""
    from .lr_plots import plot_lr
    from .plots import plot_curves
    from .summary import lr_series

    parts = [
        _figure_or_note(
            files,
            "curves.png",
            lambda b: plot_curves(files.rows, b),
            "loss and accuracy curves",
            figures,
        )
    ]
    if files.lr_trace or not figures.draws("lr.png"):
        steps, series = lr_series(files.lr_trace or [])
        starts = files.stage_steps[1:]
        draw_lr = lambda b: plot_lr(steps, series, b, stage_starts=starts)  # noqa: E731
        parts.append(_figure_or_note(files, "lr.png", draw_lr, "learning-rate schedule", figures))
    else:
        why = files.problems.get("state/", "no resume state yet")
        parts.append(
            note(
                f"learning-rate schedule: the per-step LRs are read from the resume "
                f"state, which cannot be used ({why}); the table lists each epoch's LR."
            )
        )
    if not files.rows:
        parts.append(_problem(files, "metrics.jsonl", "no epoch recorded"))
    else:
        parts.append(details("every epoch in numbers", _epoch_table(files), open_=False))
    return Section("curves", "Curves", join(parts))


def _epoch_table(files: RunFiles) -> Html:
    train = {
        r["epoch"]: r
        for r in files.rows
        if r.get("split") == "train" and type(r.get("epoch")) is int
    }
    rows = []
    for val in files.val_rows():
        epoch = val["epoch"]
        other = train.get(epoch, {})
        rows.append(
            (
                epoch + 1,
                val.get("stage", ""),
                _num(other.get("loss")),
                _pct(other.get("acc1")),
                _num(val.get("loss")),
                _pct(val.get("acc1")),
                _pct(val.get("f1")),
                f"{val['lr']:.3g}" if _number(val.get("lr")) else "–",
                _num(sum(r["seconds"] for r in (other, val) if _number(r.get("seconds"))), 1),
            )
        )
    headers = (
        "epoch",
        "stage",
        "train loss",
        "train top-1",
        "val loss",
        "val top-1",
        "val F1",
        "LR (head)",
        "seconds",
    )
    return table(headers, rows, limit=_MAX_ROWS, more="epochs", numeric=(0, 2, 3, 4, 5, 6, 7, 8))


# ----------------------------------------------------------------------------- confusion


def confusion_section(files: RunFiles, figures: Figures) -> Section:
    """The best epoch's validation confusion matrix, its largest confusions, per-class scores."""
    from .plots import plot_confusion

    epoch = files.best_epoch()
    row = next((r for r in files.val_rows() if r["epoch"] == epoch), None)
    classes = files.classes
    if row is None or not isinstance(row.get("confusion"), list) or not classes:
        body = _problem(files, "metrics.jsonl", "no validation epoch recorded yet")
        return Section("confusion", "Confusion matrix", body)
    matrix = row["confusion"]
    draw = lambda b: plot_confusion(matrix, classes, b)  # noqa: E731
    parts = [
        note(f"Validation, best epoch ({epoch + 1}); rows are the true class."),
        _figure_or_note(files, "confusion.png", draw, "confusion matrix", figures),
    ]
    mistakes = _largest_confusions(matrix, classes)
    if mistakes:
        parts.append(Html("<h3>Most frequent confusions</h3>"))
        parts.append(table(("true", "predicted as", "images"), mistakes, numeric=(2,)))
    per_class = row.get("per_class")
    if isinstance(per_class, Mapping):
        rows = [
            (
                name,
                _pct(m.get("precision")),
                _pct(m.get("recall")),
                _pct(m.get("f1")),
                m.get("support", ""),
            )
            for name, m in per_class.items()
            if isinstance(m, Mapping)
        ]
        table_html = table(
            ("class", "precision", "recall", "F1", "images"),
            rows,
            limit=_MAX_ROWS,
            more="classes",
            numeric=(1, 2, 3, 4),
        )
        parts.append(details(f"per-class scores ({len(rows)} classes)", table_html))
    return Section("confusion", "Confusion matrix", join(parts))


def _largest_confusions(matrix: list, classes: list[str], limit: int = 10) -> list[tuple]:
    cells = []
    for true, values in enumerate(matrix[: len(classes)]):
        if not isinstance(values, list):
            continue
        for predicted, count in enumerate(values[: len(classes)]):
            if true != predicted and isinstance(count, int) and count > 0:
                cells.append((count, true, predicted))
    cells.sort(key=lambda c: (-c[0], c[1], c[2]))
    return [(classes[t], classes[p], n) for n, t, p in cells[:limit]]
