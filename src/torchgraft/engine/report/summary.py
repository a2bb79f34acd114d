"""What a run shows people: the graft summary, the final table, and the plots."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from ...grafting.graft_plan import GraftReport, group_keys, percent
from ...grafting.verify import Verification

__all__ = ["final_rows", "graft_lines", "lr_series", "write_plots"]


def graft_lines(
    report: GraftReport | None, verification: Verification | None, *, resumed: bool = False
) -> list[str]:
    """Two or three lines: where the weights came from, what loaded, and the proof."""
    if resumed:
        return ["weights: restored from the run's last complete epoch"]
    if report is None:
        return ["weights: none (random initialisation)"]
    counts = {k: v for k, v in report.counts.items() if v}
    shown = ", ".join(f"{k} {v}" for k, v in counts.items())
    lines = [
        f"graft ({report.strategy}): {report.source}",
        f"  coverage {percent(report.coverage)} of parameter elements · {shown}",
    ]
    if report.missing:
        lines.append(f"  new (not in the source): {', '.join(group_keys(report.missing))}")
    if verification is not None:
        lines.append(f"  {verification}")
    return lines


def final_rows(
    session, test: dict[str, Any] | None, seconds: float, run_dir: Path
) -> list[tuple[str, str]]:
    """The rows of the final table."""
    best = session.best.get("metrics") or {}
    rows = [("best epoch", str((session.best.get("epoch") or 0) + 1))]
    for key, label in (
        ("acc1", "val top-1"),
        ("acc5", "val top-5"),
        ("f1", "val macro F1"),
        ("loss", "val loss"),
    ):
        if best.get(key) is not None:
            rows.append((label, _metric(key, best[key])))
    if test is not None:
        rows.append(("test top-1", _metric("acc1", test["acc1"])))
    rows += [
        ("training time", f"{seconds:.1f} s"),
        ("run directory", str(run_dir)),
        ("model", str(run_dir / "model.safetensors")),
    ]
    return rows


def _metric(key: str, value: float) -> str:
    return f"{value:.4f}" if key == "loss" else f"{value:.2%}"


def lr_series(trace) -> tuple[list[int], dict[str, list[float]]]:
    """Steps and per-group LRs from ``(step, {group: lr})`` records (decaying groups only:
    each ``.no_decay`` twin has the same rate)."""
    steps = [step for step, _ in trace]
    names = sorted(
        {name for _, rates in trace for name in rates if not name.endswith(".no_decay")},
        key=lambda n: next(i for i, (_, r) in enumerate(trace) if n in r),
    )
    series = {name: [rates.get(name, math.nan) for _, rates in trace] for name in names}
    return steps, series


def write_plots(run_dir: Path, session) -> list[Path]:
    """curves.png, lr.png and confusion.png (the best epoch's validation confusion matrix)."""
    from .lr_plots import plot_lr
    from .plots import plot_confusion, plot_curves

    written = [plot_curves(session.history, run_dir / "curves.png")]
    steps, series = lr_series(session.trainer.lr_trace)
    written.append(plot_lr(steps, series, run_dir / "lr.png", stage_starts=session.stage_steps[1:]))
    best_epoch = session.best.get("epoch")
    rows = [r for r in session.history if r["split"] == "val" and r["epoch"] == best_epoch]
    if rows:
        written.append(
            plot_confusion(rows[0]["confusion"], session.data.classes, run_dir / "confusion.png")
        )
    return [path for path in written if path is not None]
