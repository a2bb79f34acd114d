"""What a range test leaves behind: ``lr_find.csv``, ``lr_find.json``, ``lr_find.png``, the
lines it prints, and ``--apply`` (the suggestion written into the config to train with).

Every file is written atomically. ``--apply`` into an existing YAML file changes only the
values of ``optim.lr`` (and ``optim.backbone_lr``, scaled by the same factor so the
head/backbone ratio holds) in place, so comments and layout survive; the edit is checked by
parsing the result, which must equal the old document with those values changed — if the
file's layout defeats the in-place edit (flow style, anchors), the document is written out
again whole instead, and the message says that comments were not kept.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from ...atomic import atomic_write_text
from ...checkpoint.documents import parse_yaml, read_document_bytes
from ...errors import ConfigError, OutputError
from ...text import printable
from ...wording import in_cli, listing, option
from ..report.lr_plots import plot_lr_finder
from .rules import SKIP_END

if TYPE_CHECKING:
    from ..config.load import RunConfig
    from ..console import RunConsole
    from .sweep import LRFinderResult

__all__ = ["apply_suggestion", "check_writable", "print_result", "write_outputs"]

#: What each rule means, for the printed lines and the docs.
MEANING = {
    "steep": "where the loss falls fastest",
    "valley": "the middle of the loss's longest descent",
    "minimum": "a tenth of the LR at the lowest loss",
}
_STOPS = {
    "diverged": "the smoothed loss passed 4 × its lowest",
    "non-finite": "the loss (or a weight) became non-finite",
    "data": "the training batches ran out",
}


# ----------------------------------------------------------------------------- the files


def write_outputs(result: LRFinderResult, folder: Path) -> dict[str, Path]:
    """``lr_find.csv`` (one row per step), ``lr_find.json`` (settings, suggestions) and
    ``lr_find.png`` (the curve, each rule's LR marked) in ``folder`` (created)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = {
        "csv": atomic_write_text(folder / "lr_find.csv", _csv(result)),
        "json": atomic_write_text(
            folder / "lr_find.json", json.dumps(_document(result), indent=2) + "\n"
        ),
    }
    png = _plot(result, folder / "lr_find.png")
    if png is not None:
        written["png"] = png
    return written


def _csv(result: LRFinderResult) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    groups = list(result.group_lrs)
    writer.writerow(["step", "lr", "loss", "smoothed", *(f"lr/{name}" for name in groups)])
    for step, values in enumerate(zip(result.lrs, result.losses, result.smoothed, strict=True)):
        writer.writerow(
            [step, *map(repr, values), *(repr(result.group_lrs[g][step]) for g in groups)]
        )
    return buffer.getvalue()


def _document(result: LRFinderResult) -> dict[str, Any]:
    return {
        "start_lr": result.start_lr,
        "end_lr": result.end_lr,
        "steps": result.steps,
        "recorded": len(result.lrs),
        "stop": result.stop,
        "reference_lr": result.reference_lr,
        "skipped": {"start": result.steps // 10, "end": SKIP_END},
        "rule": result.rule,
        "why": result.why,
        "suggestion": result.suggestion,
        "suggestions": {
            rule: {
                "lr": s.lr,
                "step": s.index,
                "loss": result.smoothed[s.index],
                "meaning": MEANING[rule],
            }
            for rule, s in result.suggestions.items()
        },
    }


def _plot(result: LRFinderResult, path: Path) -> Path | None:
    """The raw and smoothed loss against ``optim.lr``, a line at each rule's LR (the
    suggestion's solid); None (nothing written) when no point is finite."""
    marks = {rule: suggestion.lr for rule, suggestion in result.suggestions.items()}
    return plot_lr_finder(
        result.lrs,
        result.losses,
        path,
        smoothed=result.smoothed,
        marks=marks,
        suggestion=result.rule if result.rule in marks else None,
        lr_name="optim.lr",
    )


# ----------------------------------------------------------------------------- the lines


def print_result(result: LRFinderResult, config: RunConfig, console: RunConsole) -> None:
    """How the sweep ended, each rule's LR with the suggestion marked, and the files."""
    done = len(result.lrs)
    why = _STOPS.get(result.stop)
    last = f" (at optim.lr {result.lrs[-1]:.3g})" if result.lrs else ""
    console.line(
        f"stopped after {done} of {result.steps} steps{last}: {why}"
        if why
        else f"swept all {result.steps} steps"
    )
    ratios = _ratios(result)
    if len(ratios) > 1 or any(ratio != 1 for ratio in ratios):
        shown = " · ".join(f"×{ratio:.3g}: {listing(names)}" for ratio, names in ratios.items())
        console.line(f"optimizer groups follow optim.lr: {shown}")
    if result.suggestions:
        console.line("optim.lr suggested by each rule (read off the smoothed loss):")
    for rule, suggestion in result.suggestions.items():
        mark = "  ← the suggestion" if rule == result.rule else ""
        console.line(f"  {rule:<8} {suggestion.lr:9.3g}  {MEANING[rule]}{mark}")
    if result.suggestion is not None:
        console.line(
            f"suggested optim.lr {result.suggestion:.3g} ({result.rule}, {result.why}); "
            f"configured {config.optim.lr:.3g}"
        )
    console.line(f"wrote lr_find.csv, lr_find.json, lr_find.png in {printable(result.dir)}")


def _ratios(result: LRFinderResult) -> dict[float, list[str]]:
    """``{LR / optim.lr: [group names]}``, in the optimizer's order."""
    ratios: dict[float, list[str]] = {}
    if result.lrs:
        for name, lrs in result.group_lrs.items():
            ratios.setdefault(round(lrs[0] / result.lrs[0], 12), []).append(printable(name))
    return ratios


# ----------------------------------------------------------------------------- --apply


def rounded(lr: float) -> float:
    """An LR as a config holds it: three significant digits (what is printed)."""
    return float(f"{lr:.3g}")


def check_writable(path: Path) -> None:
    """Refuse, before the sweep, a config file ``apply`` could not rewrite.

    Raises:
        OutputError: naming the file and what to do.
    """
    folder = path.absolute().parent
    if not (os.access(path, os.W_OK) and os.access(folder, os.W_OK | os.X_OK)):
        raise OutputError(
            f"{option('apply')}: cannot rewrite {printable(path)} (no permission to write it "
            "or its folder); make it writable, or drop the option and copy the printed LR"
        )


def apply_suggestion(
    result: LRFinderResult,
    config: RunConfig,
    target: Path | None,
    folder: Path,
    overrides: Any = (),
) -> list[str]:
    """Write the suggestion as ``optim.lr`` (and scale ``optim.backbone_lr`` with it) into
    ``target`` (a YAML file), or into ``folder/run.yaml`` when there is none.

    Returns:
        the lines telling what changed, where, and how to train with it.

    Raises:
        OutputError: the file cannot be written (the old one is intact).
    """
    lr = rounded(result.suggestion)
    factor = lr / config.optim.lr
    backbone = config.optim.backbone_lr
    if target is None:
        document = config.to_dict()
        document["optim"]["lr"] = lr
        if backbone is not None:
            document["optim"]["backbone_lr"] = rounded(backbone * factor)
        path = folder / "run.yaml"
        _write(path, yaml.safe_dump(document, sort_keys=False, allow_unicode=True))
        how = option("config", str(path))
        then = f"torchgraft train {how}" if in_cli() else f"tg.fit({str(path)!r})"
        return [
            f"applied: wrote {printable(path)} (this run's configuration, optim.lr {lr:g}); "
            f"train with: {printable(then)}"
        ]
    text = read_document_bytes(target, ConfigError).decode("utf-8", errors="replace")
    document = parse_yaml(text, str(target), ConfigError) or {}
    if not isinstance(document, dict):
        raise ConfigError(f"{target}: not a run configuration (a mapping of sections)")
    section = document.get("optim") if isinstance(document.get("optim"), dict) else {}
    updates = {"lr": lr}
    if backbone is not None and section.get("backbone_lr") is not None:
        updates["backbone_lr"] = rounded(backbone * factor)
    expected = {**document, "optim": {**section, **updates}}
    edited = _edit_in_place(text, updates)
    kept = edited is not None and _parsed(edited) == expected
    if not kept:
        edited = yaml.safe_dump(expected, sort_keys=False, allow_unicode=True)
    _write(target, edited)
    changes = ", ".join(
        f"optim.{key} {section.get(key, getattr(config.optim, key))} → {value:g}"
        for key, value in updates.items()
    )
    lines = [
        f"applied: {printable(target)}: {changes}"
        + ("" if kept else " (rewritten whole: its comments and layout were not kept)")
    ]
    if overrides:
        lines.append(
            f"note: the overrides given here are not written into {printable(target)}; "
            "give them to train as well"
        )
    return lines


def _write(path: Path, text: str) -> None:
    try:
        atomic_write_text(path, text)
    except OSError as exc:
        raise OutputError(
            f"cannot write {printable(path)}: {exc.strerror or type(exc).__name__}; the old "
            "file is intact"
        ) from exc


_OPTIM = re.compile(r"optim[ \t]*:[ \t]*(#.*)?")


def _edit_in_place(text: str, updates: dict[str, float]) -> str | None:
    """``text`` with the ``optim`` block's keys set to ``updates``, nothing else touched;
    None when the file is not laid out as a plain block mapping at the top level."""
    lines = text.splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    heads = [i for i, line in enumerate(lines) if _OPTIM.fullmatch(line.rstrip("\r\n"))]
    if not heads:
        if any(re.match(r"optim\b", line) for line in lines):
            return None  # optim: {lr: 0.1} or similar: leave it to the YAML writer
        block = "".join(f"  {key}: {_number(value)}\n" for key, value in updates.items())
        return "".join(lines) + "optim:\n" + block
    head = heads[0]
    end = head + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    keyed = [line for line in lines[head + 1 : end] if line.strip() and line.lstrip()[0] != "#"]
    indent = re.match(r"[ \t]*", keyed[0]).group() if keyed else "  "
    for key, value in updates.items():
        pattern = re.compile(
            rf"(?P<lead>{re.escape(indent)}{key}[ \t]*:[ \t]*)(?P<value>[^#\r\n]*?)"
            rf"(?P<tail>[ \t]*(#[^\r\n]*)?\r?\n)"
        )
        found = [i for i in range(head + 1, end) if pattern.fullmatch(lines[i])]
        if not found:
            lines.insert(head + 1, f"{indent}{key}: {_number(value)}\n")
            end += 1
            continue
        match = pattern.fullmatch(lines[found[0]])
        lead = match["lead"] if match["lead"][-1] in " \t" else match["lead"] + " "
        lines[found[0]] = lead + _number(value) + match["tail"]
    return "".join(lines)


def _parsed(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # the in-place edit broke a layout it did not understand


def _number(value: float) -> str:
    # YAML 1.1 (PyYAML) reads 1e-05 as a string: its own writer spells it 1.0e-05.
    return yaml.safe_dump(value).splitlines()[0]
