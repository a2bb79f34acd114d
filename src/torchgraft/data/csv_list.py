"""A CSV of ``path,label[,split]`` rows, read as someone else's file: bounded and streamed.

The CSV is opened like every file torchgraft reads (:mod:`torchgraft.checkpoint.regular_files`): a
regular file only (a FIFO named ``labels.csv`` is refused at once, never waited on), at most
``max_list_bytes`` long (:class:`~.limits.DataLimits`). It is parsed row by row, keeping only
what a sample needs (its path as written, a label number, a split code): a million rows cost
about 100 MB, not the 560 MB that lists of ``Path`` objects and row dictionaries did, and
every few thousand rows the count is checked against ``data.memory_limit_mb``
(:class:`~.limits.IndexBudget`), so an endless list stops at the limit with a ``DataError``.

The format: a header naming the columns ``path`` and ``label`` (any case, any order, other
columns ignored) and optionally ``split`` (``train``, ``val`` or ``test``, given in every row or
in none); a UTF-8 file (a byte-order mark is allowed); paths relative to the CSV's folder.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

from ..checkpoint.regular_files import FileProblem, open_regular
from ..errors import DataError
from .limits import DataLimits, IndexBudget

__all__ = ["SPLIT_NAMES", "CsvRows", "read_csv_rows"]

SPLIT_NAMES = ("train", "val", "test")
_SPLIT_CODES = {name: code for code, name in enumerate(SPLIT_NAMES, start=1)}
_CHECK_EVERY = 4096  # rows between two checks of the index budget


@dataclass
class CsvRows:
    """The rows of a CSV, compactly.

    Attributes:
        names: each row's path, as written.
        labels: each row's label, a number into ``label_names``.
        label_names: labels in order of first appearance.
        splits: each row's split code (0: none given, 1 train, 2 val, 3 test).
    """

    names: list[str]
    labels: list[int]
    label_names: list[str]
    splits: bytearray

    def split_name(self, row: int) -> str | None:
        code = self.splits[row]
        return SPLIT_NAMES[code - 1] if code else None


def read_csv_rows(path: Path, budget: IndexBudget, limits: DataLimits) -> CsvRows:
    """Every row of the CSV at ``path`` (see the module docstring).

    Raises:
        DataError: not a regular file, too long, unreadable, not UTF-8, no header naming
            ``path`` and ``label``, a row with an empty path or label or a bad split, no rows,
            or more rows than ``data.memory_limit_mb`` allows.
    """
    try:
        with open_regular(path) as (handle, size):
            if size > limits.max_list_bytes:
                raise DataError(
                    f"{path}: a CSV of {size:,} bytes, over the limit of "
                    f"{limits.max_list_bytes:,} bytes for a list file; if you trust it, "
                    f"{limits.how_to_raise('max_list_bytes')}"
                )
            text = io.TextIOWrapper(handle, encoding="utf-8-sig", newline="")
            rows = _parse(path, csv.reader(text), budget)
    except FileProblem as problem:
        raise DataError(f"{path}: cannot read the CSV: {problem}") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: cannot read the CSV ({exc})") from None
    if not rows.names:
        raise DataError(f"{path}: the CSV lists no images")
    return rows


def _parse(path: Path, reader, budget: IndexBudget) -> CsvRows:
    columns = _columns(path, next(reader, None))
    rows = CsvRows([], [], [], bytearray())
    label_ids: dict[str, int] = {}
    line, pending = 1, 0  # pending: characters of the paths not yet counted
    for raw in reader:
        if not raw:  # a blank line, as csv.DictReader skips it
            continue
        line += 1
        file, label, split = (
            raw[i].strip() if i is not None and i < len(raw) else "" for i in columns
        )
        if not file or not label:
            raise DataError(f"{path}:{line}: empty path or label")
        if split and split not in _SPLIT_CODES:
            raise DataError(f"{path}:{line}: split must be train, val or test, got {split!r}")
        label_id = label_ids.setdefault(label, len(label_ids))
        if label_id == len(rows.label_names):
            rows.label_names.append(label)
        rows.names.append(file)
        rows.labels.append(label_id)
        rows.splits.append(_SPLIT_CODES.get(split, 0))
        pending += len(file)
        if len(rows.names) % _CHECK_EVERY == 0:
            budget.add(path, _CHECK_EVERY, pending)
            pending = 0
    budget.add(path, len(rows.names) % _CHECK_EVERY, pending)
    return rows


def _columns(path: Path, header: list[str] | None) -> tuple[int | None, int | None, int | None]:
    """Where ``path``, ``label`` and ``split`` are (the last column of a name, as DictReader
    keeps the last value of a repeated name)."""
    fields = [f.strip().lower() for f in header or []]
    if "path" not in fields or "label" not in fields:
        raise DataError(
            f"{path}: the first line must be a header naming the columns path,label "
            f"(and optionally split); found {header}"
        )
    where = {name: index for index, name in enumerate(fields)}
    return where["path"], where["label"], where.get("split")
