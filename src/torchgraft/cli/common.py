"""Arguments several subcommands share, defined once."""

from __future__ import annotations

import argparse


def add_checkpoint_safety_arguments(parser: argparse.ArgumentParser) -> None:
    """The explicit, named opt-ins for pickles that need globals outside torch's safe list."""
    parser.add_argument(
        "--allow-global",
        action="append",
        default=[],
        metavar="NAME",
        help="allow this pickled global (module.Name) in a torch file; repeatable",
    )
    parser.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="unpickle without restrictions (can run code from the file; you are warned)",
    )
