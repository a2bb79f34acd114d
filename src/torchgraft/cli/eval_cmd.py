"""Evaluate a trained model on labelled images: metrics, a per-class table, a confusion matrix.

RUN_DIR_OR_MODEL is a run directory (or its model.safetensors). --data is a folder of class
subfolders, a folder with train/val/test splits (test/ is used, else val/), or a CSV of
path,label. Class names are matched to the model's by name. The confusion matrix is written
as PNG (--output, default: eval_confusion.png in the run directory or the current folder;
its folder is created if missing).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import add_trust_run_argument

NAME = "eval"
HELP = "metrics of a trained model on labelled images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="RUN_DIR_OR_MODEL", help="run directory or model file")
    parser.add_argument("--data", required=True, metavar="DIR", help="labelled images")
    parser.add_argument("--output", metavar="PNG", help="where the confusion matrix goes")
    parser.add_argument(
        "--skip-bad",
        action="store_true",
        help="leave unreadable images out (listed) instead of stopping",
    )
    add_trust_run_argument(parser, "evaluate a model built by package.module:callable")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    if args.output:
        from .common import check_output_path

        # Before the evaluation, not after it: a path under a file fails at once.
        check_output_path(args.output, "--output", "confusion.png")
        _refuse_the_runs_files(args.model, args.output)

    from ..engine.artifacts import load
    from ..engine.inference import evaluate_folder
    from ..engine.report.plots import plot_confusion
    from .output import print_json, stdout, table

    model = load(args.model, trust_run=args.trust_run)
    result, data = evaluate_folder(
        model, args.data, on_bad_image="skip" if args.skip_bad else "stop", skip_hint="--skip-bad"
    )
    folder = Path(args.model) if Path(args.model).is_dir() else Path.cwd()
    picture = Path(args.output) if args.output else folder / "eval_confusion.png"
    plot_confusion(
        result.confusion, model.classes, picture, title=f"Confusion matrix ({args.data})"
    )
    skipped = [{"path": str(b.path), "reason": b.reason} for b in data.bad]
    strays = data.source.strays
    document = {
        "model": str(args.model),
        "data": str(args.data),
        **result.to_dict(),
        "skipped": skipped,
        # files left out before any was read: not images, or beside the class folders
        "not_images": list(strays.not_images),
        "outside_classes": list(strays.outside),
        "confusion_png": str(picture),
    }
    if args.json:
        print_json(document)
        return 0
    stdout.print(table(None, ("metric", "value"), _summary_rows(result)))
    rows = [
        (name, f"{m['precision']:.2%}", f"{m['recall']:.2%}", f"{m['f1']:.2%}", m["support"])
        for name, m in result.per_class.items()
        if m["support"]
    ]
    stdout.print(table("per class", ("class", "precision", "recall", "F1", "images"), rows))
    print(f"confusion matrix: {picture}")
    for line in strays.lines():  # named as train names them (escaped there)
        print(line, file=sys.stderr)
    if data.bad:
        from ..data.scan import describe_bad

        print(f"skipped {describe_bad(data.bad)}", file=sys.stderr)
    return 0


def _summary_rows(result) -> list[tuple[str, str]]:
    rows = [
        ("images", str(result.count)),
        ("loss", f"{result.loss:.4f}"),
        ("top-1", f"{result.acc1:.2%}"),
    ]
    if result.acc5 is not None:
        rows.append(("top-5", f"{result.acc5:.2%}"))
    rows += [
        ("macro precision", f"{result.precision:.2%}"),
        ("macro recall", f"{result.recall:.2%}"),
    ]
    rows.append(("macro F1", f"{result.f1:.2%}"))
    return rows


def _refuse_the_runs_files(model: str, output: str) -> None:
    """``--output`` may replace the run's ``eval_confusion.png`` (its own default), never
    another of the run's files (``--output runs/x/config.yaml``)."""
    from ..atomic import landing
    from ..engine.run_dir import is_run_directory, run_file
    from .common import OptionError

    folder = Path(model)
    if not (folder.is_dir() and is_run_directory(folder)):
        return
    why = run_file(folder, output)
    if why is not None and landing(output).name.casefold() != "eval_confusion.png":
        raise OptionError(f"--output {output}: that is {why}; write the picture elsewhere")
