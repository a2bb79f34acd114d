"""Which zoo architecture a checkpoint comes from, from its ``{key: shape}`` table alone.

The checkpoint's table is compared with the index of every torchvision classification
builder and every timm architecture (:mod:`.arch_index`, built once per library version on
the ``meta`` device), in tiers, cheapest first:

1. **exact** — the same keys with the same shapes (one digest lookup). Also exact: the same
   *body* with a classifier for another number of classes (``head="different"``), or with
   no classifier at all (``head="absent"``). BatchNorm's ``num_batches_tracked`` counters
   are ignored here, because many exporters drop them.
2. **same shapes** — names differ but the sorted shapes are equal: a checkpoint whose module
   names were rewritten (listed in ``same_shapes``; ``names_match`` is False).
3. **nearest** — only without an exact hit: every architecture is scored at once by the
   shapes it shares with the checkpoint (names ignored), then by keys matched with their
   shapes, relative to the larger of the two tables.

Key prefixes from wrappers (``module.``, ``_orig_mod.``, Lightning's ``model.``) are tried
both kept and stripped. Several builders can have equal tables (timm's and torchvision's
``resnet18``; ``efficientnet_b0`` and ``tf_efficientnet_b0``): all of them are reported in
``exact_all`` and ``exact`` is None — one is never picked silently. Equal tables can still
compute different functions (padding, BatchNorm eps, activation), which is why the caller
verifies a guess by running the candidates side by side on the same input.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from ..grafting.match import WRAPPER_COMPONENTS
from .arch_index import LIBRARIES, ArchIndex, fingerprints, load_index, table_codes
from .identification import Candidate, Identification

__all__ = ["ARCHS_ENV", "Candidate", "Identification", "identify"]

#: Comma-separated specs (``torchvision:resnet18,timm:resnet18``) that limit identification
#: to these architectures when ``identify`` is not given ``architectures`` (tests, quick runs).
ARCHS_ENV = "TORCHGRAFT_IDENTIFY_ARCHS"
#: Nearest candidates share at least this fraction of the larger table's shapes.
MIN_SCORE = 0.1
#: Leading key components stripped at most (``model.backbone.``).
MAX_PREFIX_DEPTH = 2


def identify(
    table: Mapping[str, Sequence[int]],
    *,
    libraries: Iterable[str] = LIBRARIES,
    limit: int = 5,
    architectures: Iterable[str] | None = None,
    on_build: Callable[[str, int], None] | None = None,
    on_progress: Callable[[str, int, int], None] | None = None,
) -> Identification:
    """Identify the zoo architecture of a checkpoint from its ``{key: shape}`` table.

    Args:
        table: the checkpoint's ``{state_dict key: shape}`` (all tensors, integer ones too).
        libraries: which zoo libraries to search.
        limit: at most this many nearest candidates.
        architectures: only these specs (``"timm:resnet18"``); default all, or those listed
            in ``$TORCHGRAFT_IDENTIFY_ARCHS``.
        on_build: called as ``on_build(library, count)`` before the index of ``library``
            grows by ``count`` architectures (the first call builds it: minutes for timm).
        on_progress: called as ``on_progress(library, done, count)`` as they are built.

    Returns:
        An :class:`Identification`; ``exact`` names the architecture when exactly one fits.

    Raises:
        ValueError: an unknown library, or an ``architectures`` entry without a library.

    Example:
        >>> sd = torchvision.models.resnet18().state_dict()
        >>> identify({k: t.shape for k, t in sd.items()}).exact_all
        ('torchvision:resnet18', 'timm:resnet18')
    """
    query = {str(k): tuple(int(d) for d in s) for k, s in table.items()}
    indexes = _indexes(libraries, _restriction(architectures), on_build, on_progress)
    variants = _variants(query)
    codes = [table_codes(t) for _, t in variants]
    prints = [fingerprints(t) for _, t in variants]
    exact, note = _exact(indexes, variants, codes, prints)
    found = {"key_note": note}
    if exact:
        candidates = exact
        found.update(head=exact[0].head, num_classes=exact[0].num_classes)
    else:
        candidates, found["key_note"] = _nearest(indexes, variants, codes, prints, limit)
        found.update(head=None, num_classes=None)
    shapes = prints[0]["shapes"]  # the same for every reading of the keys
    same_shapes = tuple(
        _spec(index, e)
        for index, rows in indexes
        for e in (index.entries[i] for i in rows)
        if e["shapes"] == shapes and not any(c.spec == _spec(index, e) for c in exact)
    )
    return Identification(
        exact_all=tuple(dict.fromkeys(c.spec for c in exact)),
        candidates=tuple(candidates),
        same_shapes=tuple(dict.fromkeys(same_shapes)),
        keys=len(query),
        libraries=tuple(index.library for index, _ in indexes),
        unindexed=sum(len(index.failed) for index, _ in indexes),
        **found,
    )


def _indexes(libraries, chosen, on_build, on_progress=None) -> list[tuple[ArchIndex, list[int]]]:
    """Each library's index, with the rows to compare (all, or the chosen architectures')."""
    result = []
    for library in dict.fromkeys(libraries):
        if chosen is not None and library not in chosen:
            continue
        index = load_index(
            library,
            chosen.get(library) if chosen else None,
            on_build=on_build,
            on_progress=on_progress,
        )
        names = set(chosen[library]) if chosen else None
        rows = [i for i, e in enumerate(index.entries) if names is None or e["name"] in names]
        result.append((index, rows))
    return result


def _restriction(architectures: Iterable[str] | None) -> dict[str, list[str]] | None:
    if architectures is None:
        text = os.environ.get(ARCHS_ENV, "").strip()
        if not text:
            return None
        architectures = [a.strip() for a in text.split(",") if a.strip()]
    chosen: dict[str, list[str]] = {}
    for spec in architectures:
        library, sep, name = spec.partition(":")
        if not sep or not name or library not in LIBRARIES:
            raise ValueError(
                f"'{spec}' is not library:name with a library of {', '.join(LIBRARIES)} "
                "(e.g. 'timm:resnet18')"
            )
        chosen.setdefault(library, []).append(name)
    return chosen


def _variants(query: dict[str, tuple[int, ...]]) -> list[tuple[str, dict[str, tuple[int, ...]]]]:
    """``(note, table)`` readings of the checkpoint's keys: as stored, without wrapper
    components, then without up to :data:`MAX_PREFIX_DEPTH` leading components all keys share."""
    readings = [query]
    unwrapped = {
        ".".join(p for p in k.split(".") if p not in WRAPPER_COMPONENTS) or k: s
        for k, s in query.items()
    }
    if len(unwrapped) == len(query):  # no two keys collapsed into one
        readings.append(unwrapped)
    current = readings[-1]
    for _ in range(MAX_PREFIX_DEPTH):
        if len({k.partition(".")[0] for k in current}) != 1 or any("." not in k for k in current):
            break
        current = {k.partition(".")[2]: s for k, s in current.items()}
        readings.append(current)
    first = next(iter(query), "")
    result: dict[tuple[str, ...], tuple[str, dict]] = {}
    for reading in readings:
        moved = next(iter(reading), "")  # the first key, as this reading reads it
        note = f"read '{first}' as '{moved}'" if moved != first else ""
        result.setdefault(tuple(reading), (note, reading))
    return list(result.values())


def _spec(index: ArchIndex, entry: Mapping[str, Any]) -> str:
    return f"{index.library}:{entry['name']}"


def _exact(indexes, variants, codes, prints) -> tuple[list[Candidate], str]:
    """The exact candidates of the best tier (whole table, then body), and the key note."""
    best: tuple[int, int] | None = None
    found: list[tuple[ArchIndex, int, str, int | None]] = []
    for position, (_, reading) in enumerate(variants):
        for index, rows in indexes:
            for row in rows:
                entry = index.entries[row]
                head, classes = _head_match(reading, prints[position], entry)
                if head is None:
                    continue
                rank = (0 if head == "same" else 1, position)
                if best is None or rank < best:
                    best, found = rank, []
                if rank == best:
                    found.append((index, row, head, classes))
    if best is None:
        return [], ""
    position = best[1]
    candidates = [
        _candidate(index, row, counts, len(variants[0][1]), prints[position], head, classes)
        for index, row, head, classes in found
        for counts in _counts(index, [row], codes[position])
    ]
    return candidates, variants[position][0]


def _head_match(reading, prints, entry) -> tuple[str | None, int | None]:
    """``(head, classes)`` when ``reading`` is exactly ``entry``'s body, else ``(None, None)``."""
    if prints["weights"] == entry["weights"]:
        return "same", _classes(entry["head"])
    if not entry["head"]:
        return None, None
    if prints["weights"] == entry["body"]:
        return "absent", None
    if prints["names"] != entry["names"]:
        return None, None
    declared = {k: tuple(s) for k, s in entry["head"].items()}
    # Same names: a classifier for other classes differs in its leading dimension only.
    body = {k: s for k, s in reading.items() if k not in declared}
    if fingerprints(body)["weights"] != entry["body"]:
        return None, None
    theirs = {k: reading[k] for k in declared}
    if any(len(theirs[k]) != len(s) or theirs[k][1:] != s[1:] for k, s in declared.items()):
        return None, None
    classes = {s[0] for s in theirs.values() if s}
    return ("different", classes.pop()) if len(classes) == 1 else (None, None)


def _classes(head: Mapping[str, Sequence[int]]) -> int | None:
    leading = {s[0] for s in head.values() if s}
    return leading.pop() if len(leading) == 1 else None


def _nearest(indexes, variants, codes, prints, limit: int) -> tuple[list[Candidate], str]:
    """The ``limit`` best-scored candidates (score at least :data:`MIN_SCORE`), best first."""
    scored: list[tuple[tuple, Candidate, int]] = []
    size = len(variants[0][1])
    for index, rows in indexes:
        if not rows:
            continue
        # Every reading of the keys, counted for every architecture at once; each
        # architecture keeps the reading that matches most of its keys.
        shared = _found(index, rows, codes[0]["shapes"], "shapes")  # names play no part
        per_reading = [
            list(
                zip(
                    _found(index, rows, c["keys"], "keys"),
                    _found(index, rows, c["pairs"], "pairs"),
                    shared,
                    strict=True,
                )
            )
            for c in codes
        ]
        for n, row in enumerate(rows):
            options = [(counts[n], p) for p, counts in enumerate(per_reading)]
            counts, position = max(options, key=lambda o: (o[0][1], o[0][0], -o[1]))
            found = _candidate(index, row, counts, size, prints[position], None, None)
            rank = (-found.score, -found.shapes_matched, -found.keys_matched, found.spec)
            scored.append((rank, found, position))
    scored.sort(key=lambda item: item[0])
    kept = [(c, p) for _, c, p in scored if c.score >= MIN_SCORE][:limit]
    note = variants[kept[0][1]][0] if kept else ""
    return [c for c, _ in kept], note


def _candidate(index, row, counts, size, prints, head, classes) -> Candidate:
    entry = index.entries[row]
    keys, pairs, shapes = counts
    return Candidate(
        spec=_spec(index, entry),
        variant=entry["variant"],
        keys_total=entry["keys"],
        keys_matched=keys,
        shapes_matched=pairs,
        shapes_shared=shapes,
        names_match=prints["names"] == entry["names"],
        exact=head is not None,
        head=head,
        num_classes=classes,
        score=round(shapes / max(size, entry["keys"], 1), 4),
    )


def _counts(index: ArchIndex, rows: Sequence[int], codes: Mapping[str, np.ndarray]):
    """Per row: (keys matched, shapes matched, shapes shared) — codes found in the checkpoint's."""
    columns = [_found(index, rows, codes[kind], kind) for kind in ("keys", "pairs", "shapes")]
    return list(zip(*columns, strict=True))


def _found(index: ArchIndex, rows: Sequence[int], wanted: np.ndarray, kind: str) -> list[int]:
    """How many of each row's ``kind`` codes are in ``wanted``."""
    arrays = index.arrays
    offsets = arrays["offsets"]
    starts, ends = offsets[:-1][list(rows)], offsets[1:][list(rows)]
    wanted = np.unique(wanted)
    if not len(wanted):
        return [0] * len(rows)
    if len(rows) <= 8:  # a few exact hits: their own slices only
        return [
            int(_member(arrays[kind][a:b], wanted).sum()) for a, b in zip(starts, ends, strict=True)
        ]
    # Every architecture at once: one pass over the concatenated codes, summed per segment.
    total = np.concatenate([[0], np.cumsum(_member(arrays[kind], wanted), dtype=np.int64)])
    return (total[ends] - total[starts]).tolist()


def _member(values: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """``values`` found in the sorted, unique ``wanted`` (a binary search each: no big sort)."""
    at = np.minimum(np.searchsorted(wanted, values), len(wanted) - 1)
    return wanted[at] == values
