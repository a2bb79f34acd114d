"""The on-disk index of every zoo architecture's state_dict table, for :mod:`.identify`.

Each architecture is built once on the ``meta`` device (shapes, no tensor memory) and
reduced to fingerprints:

- 128-bit digests of its table (keys with shapes), of its key names, of its sorted shapes
  (names ignored) and of its *body* (the table without the declared classifier keys) — an
  exact match is one dictionary lookup;
- three arrays of 64-bit codes (key names; key and shape; shape and occurrence number) —
  keys matched, shapes matched and shapes shared with a checkpoint are counted for every
  architecture at once with ``numpy.isin``, without keeping any table.

``num_batches_tracked`` counters are left out of the digests (many exporters drop them;
they hold no weights; the names-blind shapes digest leaves out every scalar, since a renamed
counter cannot be recognised) but kept in the code arrays, so counts cover the whole state_dict.

One file per library, ``<cache>/arch-index/v<FORMAT>/<library>-<version>.npz``, named by
the library's ``__version__`` so an upgrade starts a new index. A new index starts from the
tables the package ships for that version (:mod:`.shipped_tables`: every architecture, no
building, about two seconds for timm and torchvision together); other versions, and
architectures a process registered itself, are built. Architectures are added
lazily (all of them, or only those asked for) and the file is rewritten atomically; a file
that cannot be read is rebuilt. Builders that fail on ``meta`` are retried with parameters
moved to ``meta`` as they are registered (torchvision's RegNets compute widths with tensors),
and recorded with the reason when that fails too, so they are not retried until the next
version. An architecture that takes longer than :data:`BUILD_SECONDS` is skipped the same way.

Reading an index imports neither library (seconds each; ``torchgraft inspect`` identifies a
checkpoint on every call): the version is read from the library's ``version.py`` as a
literal when the library is not imported yet, and an index completed for *every*
architecture records that (``complete``), so that the library need not be asked for its list
again until an import could have changed it (a process that imported the library may have
registered models of its own; then the list is asked for, as before).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_path
from ..cache import cache_dir
from .catalogue import LIBRARIES, all_names, library_version
from .meta_build import BUILD_SECONDS, arch_table
from .shipped_tables import read_shipped, shape_text, vocabulary

__all__ = [
    "BUILD_SECONDS",
    "LIBRARIES",
    "ArchIndex",
    "all_names",
    "arch_rows",
    "arch_table",
    "builds",
    "digest",
    "fingerprints",
    "index_path",
    "is_counter",
    "library_version",
    "load_index",
    "table_codes",
]

#: Bump when the file layout or a fingerprint's definition changes.
FORMAT = 1
COUNTER = "num_batches_tracked"
#: While building, the index is saved this often (seconds).
SAVE_SECONDS = 60.0

#: Extra tables for builders whose usual checkpoints differ from the no-weights default:
#: torchvision's pretrained GoogLeNet drops its auxiliary heads.
VARIANTS: dict[tuple[str, str], tuple[tuple[str, dict[str, Any]], ...]] = {
    ("torchvision", "googlenet"): (("aux_logits=False", {"aux_logits": False}),),
}

#: Architectures built in this process, per library (tests assert that a cached index is reused).
builds: Counter[str] = Counter()

Table = Mapping[str, tuple[int, ...]]
#: ``(name, variant, table, head)``: one build of an architecture.
Row = tuple[str, str, Table, Table]


def digest(lines: Iterable[str]) -> str:
    """A 128-bit hex digest of ``lines`` (order matters: sort first for a set)."""
    return hashlib.blake2b("\n".join(lines).encode(), digest_size=16).hexdigest()


_shape = shape_text


def _code(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def is_counter(key: str) -> bool:
    """True for BatchNorm's ``num_batches_tracked`` counters."""
    return key.endswith(COUNTER) and key.rpartition(".")[2] == COUNTER


def fingerprints(table: Table) -> dict[str, str]:
    """Digests of ``table`` without counters: ``weights`` (keys and shapes), ``names``, and
    ``shapes`` (sorted, names ignored; scalars left out, as renamed counters are unrecognisable)."""
    kept = {k: _shape(s) for k, s in table.items() if not is_counter(k)}
    names = sorted(kept)
    return {
        "weights": digest(f"{k}\t{kept[k]}" for k in names),
        "names": digest(names),
        "shapes": digest(sorted(_shape(s) for s in table.values() if len(s))),
    }


def table_codes(table: Table) -> dict[str, np.ndarray]:
    """64-bit codes of ``keys``, ``pairs`` (key and shape) and ``shapes`` (shape and its
    occurrence number, so that equal codes count a multiset's overlap), one per tensor."""
    codes = tables_codes([table])
    del codes["lengths"]
    return codes


def tables_codes(tables: Sequence[Table]) -> dict[str, np.ndarray]:
    """:func:`table_codes` of every table, end to end, and ``lengths`` (one per table).

    Each distinct key, (key, shape) pair and (shape, occurrence) is hashed once, however many
    tables hold it: the 1,400 tables of timm's zoo share most of them (a second in all)."""
    words = vocabulary(tables)
    key_vocab, shape_vocab, lengths = words.keys, words.shapes, words.lengths
    kid = np.array(words.key_ids, dtype=np.int64)
    sid = np.array(words.shape_ids, dtype=np.int64)
    # The n-th tensor of a shape within its table is occurrence n (in table order).
    table_of = np.repeat(np.arange(len(lengths), dtype=np.int64), lengths)
    order = np.lexsort((np.arange(len(sid)), sid, table_of))
    group = table_of[order] * max(len(shape_vocab), 1) + sid[order]
    first = np.r_[True, group[1:] != group[:-1]] if len(group) else np.zeros(0, dtype=bool)
    run_start = np.maximum.accumulate(np.where(first, np.arange(len(group)), 0))
    occurrence = np.empty(len(group), dtype=np.int64)
    occurrence[order] = np.arange(len(group)) - run_start + 1

    def hashed(ids: np.ndarray, text) -> np.ndarray:
        distinct, where = np.unique(ids, return_inverse=True)
        codes = np.array([_code(text(int(i))) for i in distinct], dtype=np.uint64)
        return codes[where].reshape(-1) if len(ids) else _EMPTY

    width = max(len(shape_vocab), 1)
    depth = int(occurrence.max()) + 1 if len(occurrence) else 1
    return {
        "keys": hashed(kid, lambda i: key_vocab[i]),
        "pairs": hashed(
            kid * width + sid, lambda i: f"{key_vocab[i // width]}\t{shape_vocab[i % width]}"
        ),
        "shapes": hashed(
            sid * depth + occurrence, lambda i: f"{shape_vocab[i // depth]}#{i % depth}"
        ),
        "lengths": np.array(lengths, dtype=np.int64),
    }


@dataclass
class ArchIndex:
    """One library's index: per-architecture summaries and the concatenated code arrays.

    Attributes:
        library, version: what was indexed.
        entries: one dict per indexed table, in order: ``name``, ``variant`` ("" for the
            default build), ``keys`` (count), ``counters``, ``head`` ({key: shape} of the
            declared classifier), digests ``weights``, ``names``, ``shapes``, ``body``.
        failed: architecture -> why it could not be indexed.
        complete: every architecture the library listed was indexed or recorded as failed.
        stored: the code arrays as read or last concatenated; use :attr:`arrays`.
    """

    library: str
    version: str
    entries: list[dict[str, Any]] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    complete: bool = False
    stored: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    _pending: list[dict[str, np.ndarray]] = field(default_factory=list, repr=False)

    def known(self) -> set[str]:
        """Names indexed or recorded as failed (nothing left to try for them)."""
        return {e["name"] for e in self.entries} | set(self.failed)

    def add(self, name: str, variant: str, table: Table, head: Table) -> None:
        """Append one architecture's table (its summary and codes) to the index."""
        self.add_tables([(name, variant, table, head)])

    def add_tables(self, rows: Sequence[Row]) -> None:
        """Append ``(name, variant, table, head)`` rows: summaries, and codes hashed for
        all of them at once (:func:`tables_codes`)."""
        for name, variant, table, head in rows:
            body = {k: s for k, s in table.items() if k not in head}
            self.entries.append(
                {
                    "name": name,
                    "variant": variant,
                    "keys": len(table),
                    "counters": sum(map(is_counter, table)),
                    "head": {k: list(s) for k, s in head.items()},
                    **fingerprints(table),
                    "body": fingerprints(body)["weights"],
                }
            )
        if rows:
            self._pending.append(tables_codes([table for _, _, table, _ in rows]))

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """``keys``, ``pairs``, ``shapes`` (uint64, every entry's codes end to end) and
        ``offsets`` (int64; entry ``i`` owns ``[offsets[i], offsets[i + 1])``)."""
        if self._pending or not self.stored:
            # Concatenated once per batch of additions, not once per architecture.
            parts = [self.stored, *self._pending] if self.stored else self._pending
            lengths = np.concatenate([p["lengths"] for p in self._pending] or [_NONE])
            start = self.stored.get("offsets", np.zeros(1, dtype=np.int64))
            self.stored = {
                kind: np.concatenate([p[kind] for p in parts] or [_EMPTY])
                for kind in ("keys", "pairs", "shapes")
            }
            self.stored["offsets"] = np.concatenate(
                [start, start[-1] + np.cumsum(lengths, dtype=np.int64)]
            )
            self._pending = []
        return self.stored


_EMPTY = np.zeros(0, dtype=np.uint64)
_NONE = np.zeros(0, dtype=np.int64)


def index_path(library: str, version: str) -> Path:
    """The index file of ``library`` at ``version`` (nothing is created)."""
    safe = re.sub(r"[^A-Za-z0-9._+-]", "_", version)
    return cache_dir("arch-index", f"v{FORMAT}", create=False) / f"{library}-{safe}.npz"


def load_index(
    library: str,
    names: Sequence[str] | None = None,
    *,
    on_build: Callable[[str, int], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> ArchIndex:
    """The index of ``library``, first completed with the architectures it lacks.

    Args:
        library: ``"torchvision"`` or ``"timm"``.
        names: architectures that must be indexed (default: every one the library lists).
            Unknown names are recorded as failed.
        on_build: called as ``on_build(library, count)`` before ``count`` architectures are
            built (the CLI prints a note: the first full timm build takes minutes).
        on_progress: called as ``on_progress(library, done, count)`` after each of them (a
            progress bar: ``torchgraft inspect`` shows one).

    Returns:
        The index; it may hold more architectures than ``names`` (earlier calls' work).

    Raises:
        ValueError: an unknown library.
    """
    if library not in LIBRARIES:
        raise ValueError(f"unknown library '{library}'; known: {', '.join(LIBRARIES)}")
    version = library_version(library)
    path = index_path(library, version)
    index = _read(path, library, version) or ArchIndex(library, version)
    if not index.complete and _seeded(index):
        _save(path, index)
    if names is None and index.complete and library not in sys.modules:
        # Not imported in this process: nothing registered models beyond the version's own
        # list, and the index covers that list (without importing the library to ask).
        return index
    wanted = all_names(library) if names is None else list(dict.fromkeys(names))
    known = index.known()
    missing = [n for n in wanted if n not in known]
    if not missing:
        if names is None and not index.complete:
            index.complete = True  # said once in the file: later calls need not ask the library
            _save(path, index)
        return index
    if on_build is not None:
        on_build(library, len(missing))
    catalogue = set(all_names(library))
    saved = time.monotonic()
    try:
        for done, name in enumerate(missing, 1):
            _index_one(index, name, catalogue)
            if on_progress is not None:
                on_progress(library, done, len(missing))
            if time.monotonic() - saved > SAVE_SECONDS:
                # An interrupted first build (minutes for timm) keeps what it has done.
                _save(path, index)
                saved = time.monotonic()
        index.complete = index.complete or names is None  # the whole list, done
    finally:
        _save(path, index)
    return index


def _seeded(index: ArchIndex) -> bool:
    """Add the package's shipped tables of this version (:mod:`.shipped_tables`) that
    ``index`` lacks; True when it had them (the index is then complete)."""
    shipped = read_shipped(index.library, index.version)
    if shipped is None:
        return False
    known = index.known()
    index.add_tables([row for row in shipped.rows if row[0] not in known])
    index.failed.update({k: v for k, v in shipped.failed.items() if k not in known})
    index.complete = True
    return True


def _index_one(index: ArchIndex, name: str, catalogue: set[str]) -> None:
    """Build ``name`` (and its extra variants) into ``index``, or record why it failed."""
    builds[index.library] += 1
    if name not in catalogue:
        index.failed[name] = f"{index.library} has no architecture '{name}'"
        return
    rows, failed = arch_rows(index.library, name)
    index.add_tables(rows)
    index.failed.update(failed)


def arch_rows(library: str, name: str) -> tuple[list[Row], dict[str, str]]:
    """``(name, variant, table, head)`` of each build of ``name`` (the default and its
    :data:`VARIANTS`), and why the others failed (by label)."""
    rows: list[Row] = []
    failed: dict[str, str] = {}
    for variant, kwargs in (("", {}), *VARIANTS.get((library, name), ())):
        try:
            table, head = arch_table(library, name, **kwargs)
        except Exception as exc:  # a builder's failure is data about that builder
            label = f"{name} ({variant})" if variant else name
            failed[label] = f"{type(exc).__name__}: {str(exc)[:200]}"
            continue
        rows.append((name, variant, dict(table), dict(head)))
    return rows, failed


def _save(path: Path, index: ArchIndex) -> None:
    with contextlib.suppress(OSError):  # a read-only cache still answers, it just forgets
        _write(path, index)


# --------------------------------------------------------------------------- the file


#: Indexes read in this process, by path, with the (mtime, size) they were read at.
_MEMO: dict[Path, tuple[tuple[int, int], ArchIndex]] = {}


def _stamp(path: Path) -> tuple[int, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_mtime_ns, stat.st_size


def _read(path: Path, library: str, version: str) -> ArchIndex | None:
    """The index stored at ``path``, or None when absent, stale or unreadable (re-read only
    when the file changed since this process last read or wrote it)."""
    stamp = _stamp(path)
    remembered = _MEMO.get(path)
    if stamp is not None and remembered is not None and remembered[0] == stamp:
        return remembered[1]
    index = _load(path, library, version) if stamp is not None else None
    if index is not None:
        _MEMO[path] = (stamp, index)
    return index


def _load(path: Path, library: str, version: str) -> ArchIndex | None:
    try:
        with np.load(path, allow_pickle=False) as stored:
            summary = json.loads(stored["summary"].tobytes().decode())
            arrays = {k: stored[k] for k in ("keys", "pairs", "shapes", "offsets")}
        if (summary["format"], summary["library"], summary["version"]) != (
            FORMAT,
            library,
            version,
        ):
            return None
        entries, offsets = summary["entries"], arrays["offsets"]
        consistent = len(offsets) == len(entries) + 1 and all(
            len(arrays[k]) == offsets[-1] for k in ("keys", "pairs", "shapes")
        )
        if not consistent:
            return None
        complete = summary.get("complete") is True  # absent from files of earlier releases
        return ArchIndex(library, version, entries, dict(summary["failed"]), complete, arrays)
    except Exception:  # missing, truncated, corrupt or foreign: rebuilt by the caller
        return None


def _write(path: Path, index: ArchIndex) -> None:
    summary = {
        "format": FORMAT,
        "library": index.library,
        "version": index.version,
        "entries": index.entries,
        "failed": index.failed,
        "complete": index.complete,
    }
    raw = np.frombuffer(json.dumps(summary, separators=(",", ":")).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as temp, temp.open("wb") as handle:
        np.savez(handle, summary=raw, **index.arrays)
    stamp = _stamp(path)
    if stamp is not None:
        _MEMO[path] = (stamp, index)
