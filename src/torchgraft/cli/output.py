"""Console output shared by the subcommands: rich tables for people, JSON for programs.

``--json`` prints exactly one JSON document on stdout; everything else (progress,
warnings) goes to stderr so the document stays parseable.

Every cell of :func:`table` and every line of :func:`plain` is data, never console markup:
it goes to rich as :class:`rich.text.Text` with control characters escaped
(:func:`torchgraft.text.printable`), so a tensor named ``[/]`` or ``\x1b[2J`` prints as
those characters. A closed pipe (``torchgraft models | head -1``) is left to
:func:`torchgraft.cli.main.main` (rich's own handling would exit with status 1).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterable, Sequence
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from ..terminal import PipeConsole
from ..text import printable, printable_lines

__all__ = ["plain", "print_json", "stderr", "stdout", "table"]


stdout = PipeConsole(soft_wrap=False)
stderr = PipeConsole(stderr=True)


def print_json(document: Any) -> None:
    """Write one JSON document to stdout: valid JSON always (RFC 8259 has no NaN or
    infinity: a non-finite number is written as null)."""
    sys.stdout.write(json.dumps(_finite(document), indent=2, default=str, allow_nan=False) + "\n")
    sys.stdout.flush()


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> Table:
    """A plain rich table; long cells fold instead of being cut.

    Cells are data: a :class:`~rich.text.Text` is used as it is, anything else is shown as
    ``printable(str(cell))`` — never parsed as markup."""
    result = Table(
        title=Text(printable(title)) if title else None,
        title_justify="left",
        show_edge=False,
        pad_edge=False,
        show_header=any(columns),
    )
    for column in columns:
        result.add_column(column, overflow="fold")
    for row in rows:
        result.add_row(*(cell if isinstance(cell, Text) else Text(printable(cell)) for cell in row))
    return result


def plain(text: str, console: Console | None = None) -> None:
    """Print ``text`` (one line or several) as data: escaped, no markup, no highlighting."""
    (console or stdout).print(printable_lines(text), markup=False, highlight=False, soft_wrap=True)


def human_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} GiB"


def human_count(count: int) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if count >= size:
            return f"{count / size:.2f}{unit}"
    return str(count)
