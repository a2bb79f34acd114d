"""``report.html``: one self-contained page describing a run, built from its files alone.

Sections, in order (their ``id`` is stable): ``glance`` (model, weights, data, classes,
best and last metrics, time), ``curves`` (loss and accuracy, the LR schedule, every epoch in
numbers), ``confusion`` (the best epoch's validation confusion matrix, the largest confusions,
per-class scores), ``examples`` (the worst-classified validation images), ``graft`` (coverage,
what was copied, renamed, adapted or left new, and the evidence for each pairing, by module)
and ``policy`` (the freeze summary and optimizer groups of each unfreezing stage).

Written atomically (:mod:`torchgraft.atomic`) after every saved epoch of ``train`` — cheaply:
no pass over the data, and of the figures only the loss and accuracy curves — and in full at
the end of ``train`` and by ``torchgraft report RUN_DIR``, which add the worst-classified
images (a pass of the saved best model over the validation split, see
:mod:`.examples`) and the LR and confusion figures. Figures follow ``output.plots``.
Both read the same files (:mod:`.files`), so they agree. The page has no script and fetches
nothing: figures and thumbnails are ``data:`` URIs, styles are inline, and every name that
comes from the run (classes, keys, paths) is escaped (:mod:`.html`).
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ...model.build_record import Trust

from ...atomic import atomic_write_text
from ...errors import ConfigError
from .examples import Examples, worst_examples
from .files import RunFiles, read_run
from .graft import graft_section
from .html import Html, Section, esc, join, note, page
from .policy import policy_section
from .sections import (
    Figures,
    confusion_section,
    curves_section,
    glance_section,
)

__all__ = ["REPORT_FILE", "require_run_dir", "write_report"]

REPORT_FILE = "report.html"


def write_report(
    run_dir: str | Path,
    *,
    final: bool = True,
    plots: bool | None = None,
    count: int = 16,
    trust_run: Trust = False,
) -> Path:
    """(Re)write ``run_dir/report.html`` from the run's files.

    Args:
        run_dir: the run directory.
        final: the full report: the ``count`` worst-classified validation images (a pass of
            the saved best model over the validation split) and every figure. False: the
            cheap refresh after an epoch — no pass over the data, no resume state read, and
            of the figures only the loss and accuracy curves are drawn.
        plots: draw the figures; None follows the run's ``output.plots``.
        count: how many worst-classified images to show (0: none, no pass over the data).
        trust_run: build the saved model for the examples even when its record names a
            ``package.module:callable`` builder (that code runs); without it such a model is
            not built and the examples section says why.

    Returns:
        the path of ``report.html``.

    Raises:
        OSError: the file cannot be written; an existing report keeps its old content.

    Example:
        >>> write_report("runs/2026-11-29_120000-tf_efficientnet_lite0")
    """
    files = read_run(run_dir, lr_trace=final)
    if plots is None:
        plots = files.section("output", "plots", True) is not False
    figures = Figures(on=plots, refresh=not final)
    found = None
    if final:
        found = (
            worst_examples(files.path, files.config, count=count, trust_run=trust_run)
            if count > 0
            else Examples(reason="not asked for (no images to show)")
        )
    sections = [
        glance_section(files),
        curves_section(files, figures),
        confusion_section(files, figures),
        examples_section(files, found),
        graft_section(files),
        policy_section(files),
    ]
    title = f"torchgraft run {files.path.name}"
    subtitle = f"{files.section('model', 'name', '?')} on {files.section('data', 'source', '?')}"
    return atomic_write_text(files.path / REPORT_FILE, page(title, subtitle, sections))


def require_run_dir(path: str | Path) -> Path:
    """``path`` as a run directory, or a :class:`ConfigError` saying what to give instead."""
    folder = Path(path)
    if not folder.is_dir():
        raise ConfigError(
            f"{folder}: no such folder; give a run directory that torchgraft train created (runs/…)"
        )
    if not (folder / "config.yaml").is_file():
        raise ConfigError(
            f"{folder}: not a run directory (no config.yaml); give a run directory that "
            "torchgraft train created (runs/…)"
        )
    return folder


def examples_section(files: RunFiles, found: Examples | None) -> Section:
    """The grid of worst-classified images, or why there is none."""
    title = "Worst-classified validation images"
    if found is None:
        text = (
            "Chosen at the end of training with the saved best model (a pass over the "
            f"validation split); until then, torchgraft report {files.path} adds them."
        )
        return Section("examples", title, note(text))
    if found.reason is not None:
        return Section("examples", title, note(f"Not shown: {found.reason}.", "warn"))
    epoch = files.best_epoch()
    subset = (
        f" (an evenly spaced {found.looked_at:,} of {found.split_size:,})"
        if found.looked_at < found.split_size
        else ""
    )
    parts = [
        note(
            f"The {len(found.items)} highest-loss of {found.split_size:,} validation images"
            f"{subset}, by the saved best model"
            + (f" (epoch {epoch + 1})" if epoch is not None else "")
            + ", as the model saw them (resized and cropped), highest loss first."
        )
    ]
    recorded = [r.get("count") for r in files.val_rows() if r.get("epoch") == epoch]
    if recorded and isinstance(recorded[0], int) and recorded[0] != found.split_size:
        parts.append(
            note(
                f"The run validated on {recorded[0]:,} images; the validation split now holds "
                f"{found.split_size:,}: the data changed since training (or files were left out).",
                "warn",
            )
        )
    parts += [note(text, "warn") for text in found.notes]
    cells = []
    for item in found.items:
        verdict = "good" if item.true == item.predicted else "bad"
        caption = (
            f'<figcaption><span class="{verdict}">predicted {esc(item.predicted)}</span> '
            f"{esc(f'{item.confidence:.0%}')}<br>true {esc(item.true)} "
            f"{esc(f'{item.p_true:.0%}')}<br>{esc(item.name)}</figcaption>"
        )
        uri = "data:image/png;base64," + base64.b64encode(item.png).decode("ascii")
        alt = f"true {item.true}, predicted {item.predicted}"
        cells.append(Html(f'<figure><img alt="{esc(alt)}" src="{uri}">{caption}</figure>'))
    parts.append(Html('<div class="grid">' + "".join(cells) + "</div>"))
    return Section("examples", title, join(parts))
