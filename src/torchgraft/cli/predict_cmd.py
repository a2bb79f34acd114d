"""Predict the classes of images with a trained model (its own preprocessing).

RUN_DIR_OR_MODEL is a run directory, its model.safetensors, or a file `torchgraft export`
wrote (model.ts.pt, model.pt2, model.onnx) with its FILE.json sidecar beside it: the sidecar
gives the classes and the preprocessing, and the file's sha256 must match the one recorded
there before it is loaded. A TorchScript or .pt2 export is a program that can run any code
when loaded, and the sha256 only proves it matches its sidecar: predict refuses one unless you
pass --trust-export (for files you made or trust). ONNX files need no opt-in (onnxruntime runs
standard operators) but need pip install "torchgraft[onnx]"; their external data files must be
recorded in the sidecar and match it too, and their inputs and outputs must be those the
sidecar describes (status 2 otherwise, like a changed file). A model that fails inside
onnxruntime while running gives status 1. onnxruntime does not bound a model's running time:
run files you did not make under a timeout of your own (docs/security.md).

Folders are walked recursively for image files. An unreadable file is named with the
reason, and the others are still predicted; the status is 1 only when no image could be read.
"""

from __future__ import annotations

import argparse

from .common import add_trust_run_argument, positive_int

NAME = "predict"
HELP = "class probabilities of images with a trained model"
#: How this command spells the library's arguments in messages (``trust`` of an export).
FLAGS = {"trust": "--trust-export"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "model",
        metavar="RUN_DIR_OR_MODEL",
        help="run directory, model.safetensors, or an exported file (model.onnx, …)",
    )
    parser.add_argument("inputs", nargs="+", metavar="IMAGE_OR_DIR", help="image files or folders")
    parser.add_argument(
        "--topk", type=positive_int, default=3, metavar="K", help="classes per image"
    )
    parser.add_argument(
        "--trust-export",
        action="store_true",
        help="load a TorchScript or .pt2 export (it can run code from the file; ONNX needs no "
        "opt-in)",
    )
    add_trust_run_argument(parser, "predict with a run's model built by package.module:callable")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    from ..data.scan import printable
    from ..engine.inference import image_files, load_for_prediction, predict_files
    from ..errors import DataError
    from .output import print_json, stderr, stdout, table

    files = image_files(args.inputs)
    if not files:
        raise DataError(f"no image files in {', '.join(args.inputs)}")
    model = load_for_prediction(args.model, trust=args.trust_export, trust_run=args.trust_run)
    predictions = predict_files(model, files, topk=args.topk)
    failed = [p for p in predictions if p.error is not None]
    if args.json:
        print_json({"model": str(args.model), "predictions": [p.to_dict() for p in predictions]})
    else:
        rows = [
            (printable(str(p.path)), *(f"{name} {prob:.1%}" for name, prob in p.top))
            for p in predictions
            if p.error is None
        ]
        if rows:
            width = max(len(r) for r in rows)
            columns = ("image", *(f"#{i}" for i in range(1, width)))
            stdout.print(table(None, columns, rows))
        for p in failed:
            stderr.print(f"{printable(str(p.path))}: {printable(p.error)}", markup=False)
    return 1 if len(failed) == len(predictions) else 0
