"""The zoo's state_dict tables, shipped with the package for the library versions it was
released with, so that the first identification takes seconds, not minutes.

Building every timm architecture on the ``meta`` device takes about two minutes of one core
(far more on a loaded machine) and ~1 GB; the tables themselves compress to a few hundred
kilobytes, because the zoo's 600,000 tensors share their names and shapes: a file holds the
distinct key names and shapes once (lzma) and, per architecture, indices into them. The
index of :mod:`.arch_index` is derived from these tables by the same code that indexes a
freshly built architecture, so a shipped table and a built one give the same index.

A file is used only for the library version it was made from (the public version:
``0.29.1+cu130`` reads ``0.29.1``'s); any other version is indexed by building, as before.
It is a file of the package, yet read as any other: sizes bounded before they are
decompressed, every index checked against its vocabulary; a damaged file is ignored (the
index is then built). Maintainers refresh the files for a new library version with
``python -m torchgraft.zoo.ship`` (docs/grafting.md).
"""

from __future__ import annotations

import functools
import json
import lzma
import os
import re
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path

__all__ = [
    "FOLDER",
    "FOLDER_ENV",
    "ShippedTables",
    "Vocabulary",
    "public_version",
    "read_shipped",
    "shape_text",
    "shipped_path",
    "vocabulary",
    "write",
]

#: Bump when the layout changes (older files are then ignored).
FORMAT = 1
FOLDER = Path(__file__).with_name("tables")
#: Another folder of tables (a maintainer checking new files); set but empty: none (tests of
#: the index's own building).
FOLDER_ENV = "TORCHGRAFT_TABLES_DIR"
#: Largest decompressed part accepted (the timm zoo's largest is ~2 MB).
MAX_PART_BYTES = 64 * 1024 * 1024
#: Largest file accepted.
MAX_FILE_BYTES = 16 * 1024 * 1024

Table = dict[str, tuple[int, ...]]


@dataclass
class ShippedTables:
    """One library version's tables.

    Attributes:
        library, version: what was built (``version`` public, without a local label).
        rows: ``(name, variant, table, head)`` per indexed build, as :mod:`.arch_index` adds
            them (``head``: the declared classifier's ``{key: shape}``).
        failed: architecture -> why it could not be built (kept: not retried).
    """

    library: str
    version: str
    rows: list[tuple[str, str, Table, Table]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Vocabulary:
    """The distinct key names and shapes of many tables, and each table's tensors as indices
    into them (the shipped file's layout, and how :func:`.arch_index.tables_codes` hashes
    each distinct value once).

    Attributes:
        keys / shapes: distinct key names / shape texts (``"768,3072"``), first seen first.
        key_ids / shape_ids: per tensor, every table end to end, in table order.
        lengths: tensors per table.
    """

    keys: list[str]
    shapes: list[str]
    key_ids: list[int]
    shape_ids: list[int]
    lengths: list[int]


def vocabulary(tables: Iterable[Mapping[str, Sequence[int]]]) -> Vocabulary:
    """The :class:`Vocabulary` of ``tables`` (``{key: shape}`` each)."""
    keys: dict[str, int] = {}
    shapes: dict[str, int] = {}
    key_ids: list[int] = []
    shape_ids: list[int] = []
    lengths: list[int] = []
    for table in tables:
        for key, shape in table.items():
            key_ids.append(keys.setdefault(key, len(keys)))
            shape_ids.append(shapes.setdefault(shape_text(shape), len(shapes)))
        lengths.append(len(table))
    return Vocabulary(list(keys), list(shapes), key_ids, shape_ids, lengths)


def shape_text(shape: Sequence[int]) -> str:
    """``"768,3072"`` for ``(768, 3072)`` ("" for a scalar)."""
    return _shape_text(tuple(shape))


@functools.lru_cache(maxsize=1 << 16)
def _shape_text(shape: tuple[int, ...]) -> str:
    # A zoo's million tensors have a few thousand shapes: each is written once.
    return ",".join(map(str, shape))


def public_version(version: str) -> str:
    """``version`` without its local label (``0.29.1+cu130`` -> ``0.29.1``)."""
    return version.partition("+")[0]


def shipped_path(library: str, version: str, folder: Path | None = None) -> Path | None:
    """The file of ``library`` at ``version`` (public part) in ``folder`` (default: the
    package's, or ``$TORCHGRAFT_TABLES_DIR``'s; None when that is set but empty)."""
    if folder is None:
        chosen = os.environ.get(FOLDER_ENV)
        if chosen == "":
            return None
        folder = FOLDER if chosen is None else Path(chosen)
    return folder / _file_name(library, version)


def _file_name(library: str, version: str) -> str:
    return f"{library}-{re.sub(r'[^A-Za-z0-9._-]', '_', public_version(version))}.npz"


def read_shipped(library: str, version: str, folder: Path | None = None) -> ShippedTables | None:
    """The shipped tables of ``library`` at ``version``; None when there is no such file or
    it cannot be read as one (wrong format, library or version, sizes out of bounds,
    indices outside the vocabularies)."""
    path = shipped_path(library, version, folder)
    try:
        if path is None or not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            return None
        with np.load(path, allow_pickle=False) as stored:
            parts = {name: stored[name] for name in _PARTS}
        header = json.loads(_unpacked(parts["header"]))
        if (header.get("format"), header.get("library"), header.get("version")) != (
            FORMAT,
            library,
            public_version(version),
        ):
            return None
        return _tables(header, parts)
    except _UNREADABLE:
        return None


_UNREADABLE = (
    OSError,
    EOFError,
    ValueError,
    KeyError,
    TypeError,
    IndexError,
    lzma.LZMAError,
    zipfile.BadZipFile,
)
_PARTS = ("header", "keys", "shapes", "key_ids", "shape_ids", "offsets")


def _unpacked(part: np.ndarray) -> bytes:
    """An lzma part, decompressed within :data:`MAX_PART_BYTES`."""
    if part.dtype != np.uint8 or part.ndim != 1:
        raise ValueError("not a byte part")
    decompressor = lzma.LZMADecompressor(format=lzma.FORMAT_XZ)
    data = decompressor.decompress(part.tobytes(), max_length=MAX_PART_BYTES)
    if not decompressor.eof:
        raise ValueError("part larger than allowed, or truncated")
    return data


def _tables(header: dict[str, Any], parts: dict[str, np.ndarray]) -> ShippedTables:
    keys = _unpacked(parts["keys"]).decode().split("\n")
    shapes = [
        tuple(int(d) for d in text.split(",")) if text else ()
        for text in _unpacked(parts["shapes"]).decode().split("\n")
    ]
    key_ids = np.cumsum(np.frombuffer(_unpacked(parts["key_ids"]), dtype="<i4"), dtype=np.int64)
    shape_ids = np.frombuffer(_unpacked(parts["shape_ids"]), dtype="<u4").astype(np.int64)
    offsets = parts["offsets"].astype(np.int64)
    entries = header["entries"]
    count = len(key_ids)
    checked = (
        len(shape_ids) == count
        and len(offsets) == len(entries) + 1
        and offsets[0] == 0
        and offsets[-1] == count
        and bool(np.all(np.diff(offsets) >= 0))
        and (count == 0 or (key_ids.min() >= 0 and key_ids.max() < len(keys)))
        and (count == 0 or shape_ids.max() < len(shapes))
    )
    if not checked:
        raise ValueError("indices outside the file's vocabularies")
    key_list, shape_list = key_ids.tolist(), shape_ids.tolist()
    shipped = ShippedTables(header["library"], header["version"], failed=dict(header["failed"]))
    for (name, variant, head_keys), start, end in zip(
        entries, offsets[:-1].tolist(), offsets[1:].tolist(), strict=True
    ):
        table = {
            keys[k]: shapes[s]
            for k, s in zip(key_list[start:end], shape_list[start:end], strict=True)
        }
        if len(table) != end - start or any(k not in table for k in head_keys):
            raise ValueError(f"{name}: repeated keys, or a head key it does not have")
        head = {k: table[k] for k in head_keys}
        shipped.rows.append((str(name), str(variant), table, head))
    return shipped


def write(shipped: ShippedTables, folder: Path | None = None) -> Path:
    """Write ``shipped`` as its library version's file in ``folder``; returns the path."""
    tables = [table for _, _, table, _ in shipped.rows]
    words = vocabulary(tables)
    broken = next((k for k in words.keys if "\n" in k), None)
    if broken is not None:
        raise ValueError(f"key {broken!r} holds a line break")
    offsets = np.concatenate([[0], np.cumsum(words.lengths, dtype=np.int64)])
    entries = [[name, variant, list(head)] for name, variant, _, head in shipped.rows]
    header = {
        "format": FORMAT,
        "library": shipped.library,
        "version": public_version(shipped.version),
        "entries": entries,
        "failed": shipped.failed,
    }
    # Key ids as differences: neighbours in a table are mostly neighbours in the vocabulary.
    deltas = np.diff(np.array(words.key_ids, dtype=np.int64), prepend=0).astype("<i4")
    parts = {
        "header": json.dumps(header, separators=(",", ":")).encode(),
        "keys": "\n".join(words.keys).encode(),
        "shapes": "\n".join(words.shapes).encode(),
        "key_ids": deltas.tobytes(),
        "shape_ids": np.array(words.shape_ids, dtype="<u4").tobytes(),
    }
    packed = {
        name: np.frombuffer(lzma.compress(data, preset=9), dtype=np.uint8)
        for name, data in parts.items()
    }
    path = (folder or FOLDER) / _file_name(shipped.library, shipped.version)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp, temp.open("wb") as handle:
        np.savez(handle, offsets=offsets, **packed)
    return path
