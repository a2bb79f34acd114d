"""Fine-tune a model; with no arguments, the embedded default (not yet available)."""

from __future__ import annotations

import argparse

from ..errors import TorchgraftError

NAME = "train"
HELP = "fine-tune a model (no arguments: the embedded default run)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="run configuration (YAML)")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. optim.lr=0.01")


def run(args: argparse.Namespace) -> int:
    raise TorchgraftError(
        "the training engine is not available yet in this version; `torchgraft graft`, "
        "`inspect` and `models` work today"
    )
