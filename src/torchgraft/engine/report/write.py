"""``report.html``: one self-contained page describing a run, built from its files alone.

Sections, in order (their ``id`` is stable): ``glance`` (model, weights, data, classes,
best and last metrics, time), ``curves`` (loss and accuracy, the LR schedule, every epoch in
numbers), ``confusion`` (the best epoch's validation confusion matrix, the largest confusions,
per-class scores), ``misclassified`` (the validation images the model got wrong, worst
first), ``least-confident`` (the ones it got right but was least sure of), ``graft``
(coverage, what was copied, renamed, adapted or left new, and the evidence for each pairing,
by module) and ``policy`` (the freeze summary and optimizer groups of each unfreezing stage).

Written atomically (:mod:`torchgraft.atomic`) after every saved epoch of ``train`` — cheaply:
no pass over the data, and of the figures only the loss and accuracy curves — and in full at
the end of ``train`` and by ``torchgraft report RUN_DIR``, which add the two image sections
(a pass of the saved best model over the validation split, see :mod:`.examples` and
:mod:`.gallery`) and the LR and confusion figures. Figures follow ``output.plots``.
Both read the same files (:mod:`.files`), so they agree. The page has no script and fetches
nothing: figures and thumbnails are ``data:`` URIs, styles are inline, and every name that
comes from the run (classes, keys, paths) is escaped (:mod:`.html`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

    from ...model.build_record import Trust

from ...atomic import atomic_write_text
from ...errors import ConfigError
from .examples import Examples, find_examples
from .files import read_run
from .gallery import image_sections
from .graft import graft_section
from .html import page
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
    on_step: Callable[[int, int], None] | None = None,
) -> Path:
    """(Re)write ``run_dir/report.html`` from the run's files.

    Args:
        run_dir: the run directory.
        final: the full report: the image sections (a pass of the saved best model over
            the validation split) and every figure. False: the
            cheap refresh after an epoch — no pass over the data, no resume state read, and
            of the figures only the loss and accuracy curves are drawn.
        plots: draw the figures; None follows the run's ``output.plots``.
        count: the most images each image section shows: the ``count`` worst misclassified
            and the ``count`` least confident correct ones (0: none, no pass over the data).
        trust_run: build the saved model for the examples even when its record names a
            ``package.module:callable`` builder (that code runs); without it such a model is
            not built and the examples section says why.
        on_step: the pass over the validation images (``final`` only) calls
            ``on_step(done, total)`` with the images looked at so far: at 0 before the first
            batch and after each — a progress bar's callback (:meth:`RunConsole.task
            <torchgraft.engine.console.RunConsole.task>`). Nothing else reports to it.

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
            find_examples(
                files.path, files.config, count=count, trust_run=trust_run, on_step=on_step
            )
            if count > 0
            else Examples(reason="not asked for (0 images per section)")
        )
    sections = [
        glance_section(files),
        curves_section(files, figures),
        confusion_section(files, figures),
        *image_sections(files, found),
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
