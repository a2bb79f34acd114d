"""(Re)write a run directory's report.html: one self-contained page describing the run.

The page holds the run at a glance, the loss/accuracy and LR curves, the confusion matrix,
the misclassified validation images (worst first: the lowest probability of the true class)
and, apart, the least confident correct ones (the saved best model run over the validation
split again), the graft with the evidence for each pairing, and the freeze summary and
parameter groups of each stage. It is built from the run's files only, embeds its images and fetches
nothing. train writes it too (after every saved epoch, and in full at the end); this command
regenerates it, e.g. for a run that was stopped before the end.
"""

from __future__ import annotations

import argparse

from .common import add_trust_run_argument

NAME = "report"
HELP = "regenerate a run directory's report.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a run directory train created")
    parser.add_argument(
        "--examples",
        type=int,
        default=16,
        metavar="K",
        help="the most images each image section shows: the K worst misclassified validation "
        "images and the K least confident correct ones (default: 16; 0: neither, no pass over "
        "the data)",
    )
    parser.add_argument(
        "--plots",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="draw the figures (default: as the run's output.plots says)",
    )
    add_trust_run_argument(
        parser, "build the saved model for the examples although package.module:callable builds it"
    )


def run(args: argparse.Namespace) -> int:
    from ..engine.report.write import REPORT_FILE, require_run_dir, write_report
    from ..errors import ConfigError, OutputError

    if args.examples < 0:
        raise ConfigError(
            f"--examples {args.examples}: give 0 or more images per section (0: no images, "
            "no pass over the data)"
        )
    folder = require_run_dir(args.run_dir)
    if args.examples:
        _say_when_the_model_is_not_trusted(folder, args.trust_run)
    try:
        path = write_report(folder, plots=args.plots, count=args.examples, trust_run=args.trust_run)
    except OSError as exc:
        raise OutputError(
            f"cannot write {folder / REPORT_FILE}: {exc.strerror or exc}; make room (or make "
            "the folder writable) and run torchgraft report again"
        ) from exc
    print(path)
    return 0


def _say_when_the_model_is_not_trusted(folder, trust_run: bool) -> None:
    """The page is written without the examples when the run's builder is not trusted;
    say so on stderr too, where the person who ran the command looks."""
    import sys

    from ..engine.artifacts import read_model_document
    from ..errors import TorchgraftError, UntrustedRunError
    from ..text import printable

    try:
        read_model_document(folder, trust_run=trust_run)
    except UntrustedRunError as exc:
        print(
            "torchgraft report: note: the misclassified and least confident images are left "
            f"out: {printable(str(exc))}",
            file=sys.stderr,
        )
    except TorchgraftError:
        pass  # the page says what is wrong with the model
