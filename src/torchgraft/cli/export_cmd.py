"""Export a trained run to TorchScript, torch.export (.pt2) or ONNX, checked before it is done.

The written file is loaded back by the runtime that will use it (torch.jit.load,
torch.export.load, onnxruntime) and must give the eager model's logits on images prepared
with the run's preprocessing, at batch sizes 1 and 3 (the batch dimension is dynamic):
max |difference| <= tolerance x max(1, largest logit). The file gets a JSON sidecar,
FILE.json (classes, preprocessing, input shape, sha256, the measured difference, method,
torch version), which `torchgraft predict FILE` reads. Default FILE: model.ts.pt, model.pt2
or model.onnx in the run directory. Files are written atomically: a failed export or check
(exit status 1) leaves any previous export as it was. A run stopped before its last epoch is
exported all the same (its best model so far), with a line on stderr saying it is unfinished
and how to finish it, and "finished": false in the sidecar. ONNX needs the optional extra:
pip install "torchgraft[onnx]".
"""

from __future__ import annotations

import argparse
import sys

from .common import add_trust_run_argument, check_output_path, non_negative_float

NAME = "export"
HELP = "export a trained run to TorchScript, torch.export or ONNX"

#: The formats and their default file names (engine.exported.FORMATS, without importing torch).
DEFAULT_FILES = {"torchscript": "model.ts.pt", "pt2": "model.pt2", "onnx": "model.onnx"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", metavar="RUN_DIR", help="run directory (or its model.safetensors)"
    )
    parser.add_argument(
        "--format", required=True, choices=tuple(DEFAULT_FILES), help="export format"
    )
    parser.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="file to write (default: model.ts.pt / model.pt2 / model.onnx in RUN_DIR)",
    )
    parser.add_argument(
        "--tolerance",
        type=non_negative_float,
        default=None,
        metavar="T",
        help="largest logit difference allowed, times max(1, largest logit) (default: 1e-4)",
    )
    add_trust_run_argument(parser, "export a run whose model is built by package.module:callable")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    if args.output:
        # Before the model is loaded or converted: a path under a file fails at once.
        check_output_path(args.output, "-o/--output", DEFAULT_FILES[args.format])

    from ..engine.export.write import DEFAULT_TOLERANCE, export_run
    from ..text import printable
    from .output import plain, print_json

    tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
    result = export_run(
        args.run_dir, args.format, args.output, tolerance=tolerance, trust_run=args.trust_run
    )
    unfinished = result.progress.unfinished(args.run_dir)
    if unfinished:
        # On stderr, so it shows with --json too (stdout holds only the JSON document).
        print(f"torchgraft export: warning: {unfinished}", file=sys.stderr)
    if args.json:
        print_json(result.to_dict())
        return 0
    sizes = " and ".join(map(str, result.batch_sizes))
    lines = [
        f"exported {printable(args.run_dir)} -> {printable(result.path)} "
        f"({result.format}, {result.method}, {result.seconds:.1f} s)",
        f"checked with {result.runtime} on {result.sample}, batch sizes {sizes}: "
        f"largest logit difference {result.max_abs_diff:.2g} (allowed {result.allowed:.2g})",
        f"sidecar {printable(result.sidecar)} (classes, preprocessing, sha256 "
        f"{result.sha256[:12]}…)",
        *(f"note: {printable(note)}" for note in result.notes),
    ]
    plain("\n".join(lines))
    return 0
