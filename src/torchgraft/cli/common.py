"""Arguments and checks several subcommands share, defined once.

The checks here run before a command reads a file or builds a model, so a mistake in the
command line costs nothing and is reported as one: :class:`OptionError` (exit status 2)
for options that contradict each other or an output that cannot be written, argparse's own
error for a value out of range (``--min-coverage 1.5``, ``--num-classes -3``).
"""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from ..atomic import same_file, unwritable_kind, within
from ..errors import TorchgraftError
from ..text import printable

__all__ = [
    "OptionError",
    "add_checkpoint_safety_arguments",
    "add_trust_run_argument",
    "check_not_an_input",
    "check_output_path",
    "fraction",
    "non_negative_float",
    "positive_float",
    "positive_int",
]


class OptionError(TorchgraftError, ValueError):
    """A command line that cannot be carried out as written: options that contradict each
    other or that this run would ignore, or an output path that cannot be written."""


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


def add_trust_run_argument(parser: argparse.ArgumentParser, what: str) -> None:
    """``--trust-run``: the opt-in for a run directory or model file whose record names a
    ``package.module:callable`` builder (a record read from a file never selects code)."""
    parser.add_argument(
        "--trust-run",
        action="store_true",
        help=f"{what} (that code runs; torchvision and timm models need no opt-in)",
    )


def positive_int(text: str) -> int:
    """argparse type: a whole number >= 1 (a class count, a channel count)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value}")
    return value


def fraction(text: str) -> float:
    """argparse type: a number from 0 to 1 (a share of elements; 0 disables the floor)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number from 0 to 1, got {text!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a fraction from 0 to 1 (0.9 means 90%), got {text}"
        )
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0 (a learning rate, a decay factor)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text}")
    return value


def non_negative_float(text: str) -> float:
    """argparse type: a finite number >= 0 (a weight decay)."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text}")
    return value


def check_output_path(
    path: str | os.PathLike[str], flag: str, example: str = "model.safetensors"
) -> None:
    """Refuse an output path that cannot be written, before the work that would fill it.

    A missing folder is fine (it is created, as for the run directory and its plots); a path
    that is a folder, a folder that is really a file, or a folder we may not write in is not,
    and neither is anything but a regular file or a new name: a device (``/dev/null``), a FIFO
    or a socket, or a link to one, would be replaced by the file (every write renames a
    finished file into place; see :mod:`torchgraft.atomic`).

    Args:
        path: the path as the user typed it.
        flag: how the message names the option (``-o/--output``).
        example: a file name to suggest inside a folder given by mistake.

    Raises:
        OptionError: naming ``flag`` and what is in the way.
    """
    target = Path(path).absolute()
    shown = printable(path)
    if target.is_dir():
        raise OptionError(
            f"{flag} {shown} is a folder; give a file name inside it, e.g. "
            f"{printable(Path(path) / example)}"
        )
    kind = unwritable_kind(target)
    if kind is not None:
        raise OptionError(
            f"{flag} {shown} is {kind}, not a regular file: torchgraft writes a file whole and "
            f"renames it into place, which would replace it; give the path of a file (to write "
            f"nothing, leave out {flag.split()[0]})"
        )
    existing = target.parent
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OptionError(
            f"{flag} {shown}: {printable(existing)} is a file, not a folder, so nothing can "
            "be written under it; choose another path"
        )
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OptionError(
            f"{flag} {shown}: no permission to write in {printable(existing)}; choose another path"
        )


def check_not_an_input(
    path: str | os.PathLike[str], flag: str, inputs: dict[str, str | os.PathLike[str]]
) -> None:
    """Refuse an output that would replace a file the same command reads.

    Args:
        path: the output as the user typed it.
        flag: how the message names the output (``--plan-out``).
        inputs: what the command reads, by how the message names it (``"SOURCE"``): a file
            (refused if the write would replace it, or the name it was given by) or a folder
            (refused anywhere inside it: a checkpoint folder's shards are all read).

    Raises:
        OptionError: naming ``flag``, the input and what to do.
    """
    for name, source in inputs.items():
        folder = Path(source).is_dir()
        if within(path, source) if folder else same_file(path, source):
            where = f"inside {name} {printable(source)}" if folder else f"{name} itself"
            raise OptionError(
                f"{flag} {printable(path)} is {where}, which this command reads: writing there "
                "would replace what it reads; choose another path"
            )
