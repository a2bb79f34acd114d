"""The report's two image sections, from :class:`~.examples.Examples`: the misclassified
validation images (worst first: the lowest probability of the true class) and the least
confident correct ones (least sure first).

Each section shows only what its title says: a model that got every image right has a
misclassified section that says so in words, never one filled with right answers. Every
name on a caption (classes, file names) is escaped by :mod:`.html`.
"""

from __future__ import annotations

import base64

from .examples import Example, Examples
from .files import RunFiles
from .html import Html, Section, esc, join, note

__all__ = ["LEAST_CONFIDENT", "MISCLASSIFIED", "image_sections"]

#: The sections' ids (stable: links and tests use them) and titles.
MISCLASSIFIED = ("misclassified", "Misclassified validation images")
LEAST_CONFIDENT = ("least-confident", "Least confident correct validation images")


def image_sections(files: RunFiles, found: Examples | None) -> list[Section]:
    """The misclassified section, then the least confident correct one.

    ``found`` None: the cheap refresh during training (no pass over the data yet);
    ``found.reason`` set: why there are no images (both sections say it).
    """
    sections = []
    for key, title in (MISCLASSIFIED, LEAST_CONFIDENT):
        if found is None:
            text = (
                "Chosen at the end of training with the saved best model (a pass over the "
                f"validation split); until then, torchgraft report {files.path} adds them."
            )
            sections.append(Section(key, title, note(text)))
        elif found.reason is not None:
            sections.append(Section(key, title, note(f"Not shown: {found.reason}.", "warn")))
        elif not found.wrong + found.right:
            none = note("Not shown: no validation image could be read.", "warn")
            sections.append(Section(key, title, join([none, *_warnings(files, found)])))
        elif key == MISCLASSIFIED[0]:
            sections.append(Section(key, title, _misclassified(files, found)))
        else:
            sections.append(Section(key, title, _least_confident(files, found)))
    return sections


def _misclassified(files: RunFiles, found: Examples) -> Html:
    looked = _looked_at(found)
    if not found.wrong:
        lead = (
            f"None: the saved best model{_epoch(files)} classified every one of the "
            f"{looked} correctly."
        )
        return join([note(lead), *_warnings(files, found)])
    shown = len(found.misclassified)
    which = "all of them" if shown == found.wrong else f"the {shown} worst"
    lead = (
        f"{found.wrong:,} of the {looked} were classified wrongly by the saved best model"
        f"{_epoch(files)}; shown: {which}, worst first (the lowest probability given to the "
        "true class), as the model saw them (resized and cropped)."
    )
    return join([note(lead), *_warnings(files, found), _grid(found.misclassified, wrong=True)])


def _least_confident(files: RunFiles, found: Examples) -> Html:
    looked = _looked_at(found)
    if not found.right:
        lead = f"None: the saved best model{_epoch(files)} got none of the {looked} right."
        return join([note(lead), *_warnings(files, found)])
    shown = len(found.least_confident)
    which = "all of them" if shown == found.right else f"the {shown} least confident"
    lead = (
        f"{found.right:,} of the {looked} were classified correctly by the saved best model"
        f"{_epoch(files)}; shown: {which}, least confident first (the lowest probability of "
        "the right class), as the model saw them (resized and cropped)."
    )
    return join([note(lead), *_warnings(files, found), _grid(found.least_confident, wrong=False)])


def _looked_at(found: Examples) -> str:
    """The images the model classified, in words ("359 validation images", or a subset);
    unreadable ones are not among them (a warning counts them)."""
    classified = f"{found.wrong + found.right:,} validation images"
    if found.looked_at < found.split_size:
        return f"{classified} looked at (an evenly spaced subset of the {found.split_size:,})"
    return classified


def _epoch(files: RunFiles) -> str:
    epoch = files.best_epoch()
    return f" (epoch {epoch + 1})" if epoch is not None else ""


def _warnings(files: RunFiles, found: Examples) -> list[Html]:
    """The data changed since training; files that could not be read."""
    out = []
    epoch = files.best_epoch()
    recorded = [r.get("count") for r in files.val_rows() if r.get("epoch") == epoch]
    if recorded and isinstance(recorded[0], int) and recorded[0] != found.split_size:
        out.append(
            note(
                f"The run validated on {recorded[0]:,} images; the validation split now holds "
                f"{found.split_size:,}: the data changed since training (or files were left out).",
                "warn",
            )
        )
    return out + [note(text, "warn") for text in found.notes]


def _grid(examples: list[Example], *, wrong: bool) -> Html:
    """Thumbnails with their captions: a wrong one says what it was taken for and how sure
    the model was of the truth; a right one how sure it was and what came second."""
    cells = []
    for item in examples:
        if wrong:
            caption = (
                f'<span class="bad">predicted {esc(item.predicted)}</span> '
                f"{esc(f'{item.confidence:.0%}')}<br>true {esc(item.true)} "
                f"{esc(f'{item.p_true:.0%}')}"
            )
        else:
            caption = f'<span class="good">{esc(item.true)}</span> {esc(f"{item.p_true:.0%}")}'
            if item.runner_up is not None:
                caption += f"<br>next: {esc(item.runner_up)} {esc(f'{item.p_runner_up:.0%}')}"
        uri = "data:image/png;base64," + base64.b64encode(item.png).decode("ascii")
        alt = f"true {item.true}, predicted {item.predicted}"
        cells.append(
            f'<figure><img alt="{esc(alt)}" src="{uri}"><figcaption>{caption}'
            f"<br>{esc(item.name)}</figcaption></figure>"
        )
    return Html('<div class="grid">' + "".join(cells) + "</div>")
