"""The two layouts ``torch.save`` writes, checked before torch reads them.

- **zip** (torch >= 1.6): ``<archive>/data.pkl`` (the pickle), ``<archive>/data/<key>`` (one
  record per storage, stored uncompressed so that it can be memory-mapped), and small records
  (``version``, ``byteorder``). Checked: the archive opens; it is not TorchScript; entries
  are stored, not compressed (a compressed entry is inflated into memory whole: a 2 MB file
  can inflate to gigabytes), unique (two entries of one name could be read differently by
  Python's zipfile and torch's miniz) and few enough; their declared sizes fit the
  inflation budget; each ``data.pkl`` is scanned (:mod:`.pickle_scan`) and each storage it
  claims fits the record that holds it.
- **legacy** (non-zip): five pickles in a row (magic number, protocol, system info, the
  object, the storage keys), then the raw storages. The pickles are scanned in place (the file
  is memory-mapped, not copied) and the storages they claim must fit in the file: torch
  allocates each one at its claimed size before reading it.

Every refusal is a :class:`CheckpointError` naming the file; a pickle wanting globals outside
the allowed set is not refused here but reported (:attr:`TorchFileCheck.refused`), so that
the caller can name every one of them.
"""

from __future__ import annotations

import mmap
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import CheckpointError
from .limits import ReaderLimits, limit_error
from .pickle_scan import PickleScan, scan_pickle
from .reasons import short_reason

__all__ = ["TorchFileCheck", "check_torch_file"]

#: Entries a torch zip holds besides one record per storage (version, byteorder, …).
_OTHER_ENTRIES = 64
#: Pickles at the start of a legacy file: magic, protocol, sys info, the object, storage keys.
_LEGACY_PICKLES = 5


@dataclass
class TorchFileCheck:
    """What checking a torch file found: globals to refuse, and the scans' totals."""

    refused: list[str] = field(default_factory=list)
    tensors: int = 0

    def add(self, scan: PickleScan) -> None:
        self.refused += [name for name in scan.refused if name not in self.refused]
        self.tensors += scan.tensors


def check_torch_file(
    path: Path, kind: str, allowed: frozenset[str], limits: ReaderLimits, scan: bool
) -> TorchFileCheck:
    """Check a ``torch`` (zip) or ``torch-legacy`` file before ``torch.load`` reads it.

    Args:
        path: the file.
        kind: ``torch`` or ``torch-legacy`` (:func:`.io.sniff_format`).
        allowed: the global names torch will accept in this load.
        limits: the reader's limits.
        scan: scan the pickles (False only for ``trust=True``, where the file may run code
            anyway); the zip's layout is checked either way.

    Raises:
        CheckpointError: damage, a crafted layout, or a limit exceeded.
    """
    if kind == "torch":
        return _check_zip(path, allowed, limits, scan)
    return _check_legacy(path, allowed, limits) if scan else TorchFileCheck()


def _check_zip(
    path: Path, allowed: frozenset[str], limits: ReaderLimits, scan: bool
) -> TorchFileCheck:
    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            _check_entries(path, infos, size, limits)
            pickles = {
                info.filename: archive.read(info) if scan else b""
                for info in infos
                if info.filename.endswith("/data.pkl")
            }
    except CheckpointError:
        raise
    except Exception as exc:  # BadZipFile, but also struct, zlib and overflow errors
        raise CheckpointError(
            f"{path}: a damaged or truncated zip archive ({short_reason(exc)}); re-download "
            "or re-save it"
        ) from None
    check = TorchFileCheck()
    if not scan:
        return check
    records = {info.filename: info.file_size for info in infos}
    claimed = 0
    for name, data in pickles.items():
        result = scan_pickle(data, 0, allowed, limits, str(path))
        check.add(result)
        claimed += result.claimed
        prefix = name[: -len("data.pkl")]
        for key, nbytes in result.storages.items():
            held = records.get(f"{prefix}data/{key}")
            if held is not None and nbytes > held:
                raise CheckpointError(
                    f"{path}: refused: a storage claims {nbytes:,} bytes but its record "
                    f"holds {held:,} (a damaged or crafted file)"
                )
    _check_budget(path, "its tensors and arrays claim", claimed, size, limits)
    if check.tensors > limits.max_tensors:
        raise limit_error(str(path), "max_tensors", f"{check.tensors:,} tensors", limits)
    return check


def _check_entries(path: Path, infos: list[zipfile.ZipInfo], size: int, limits) -> None:
    names = [info.filename for info in infos]
    if len(names) > limits.max_tensors + _OTHER_ENTRIES:
        raise limit_error(str(path), "max_tensors", f"a zip of {len(names):,} entries", limits)
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(
            f"{path}: a TorchScript archive, which cannot be read without running its code; "
            "save model.state_dict() with torch.save, or load it with torch.jit.load yourself"
        )
    pickles = [name for name in names if name.endswith("/data.pkl")]
    if not pickles:
        shown = ", ".join(ascii(name) for name in names[:3]) or "nothing"
        raise CheckpointError(
            f"{path}: a zip archive but not a torch checkpoint (no data.pkl; holds {shown})"
        )
    if len(set(names)) != len(names):
        raise CheckpointError(
            f"{path}: refused: a zip with two entries of the same name (torch and Python's "
            "zipfile could read different ones; a crafted file)"
        )
    compressed = [info.filename for info in infos if info.compress_type != zipfile.ZIP_STORED]
    if compressed:
        raise CheckpointError(
            f"{path}: refused: compressed zip entries ({compressed[0]!a}"
            f"{' …' if len(compressed) > 1 else ''}); torch.save stores them uncompressed, "
            "and an entry is inflated into memory whole. Unzip and re-save it with torch.save"
        )
    for info in infos:
        if info.header_offset + info.compress_size > size or info.file_size != info.compress_size:
            raise CheckpointError(
                f"{path}: a damaged or truncated zip archive (entry {info.filename!a} "
                "runs past the end of the file); re-download or re-save it"
            )
    _check_budget(path, "its zip entries hold", sum(i.file_size for i in infos), size, limits)
    largest = max(infos, key=lambda info: info.file_size if info.filename in pickles else -1)
    if largest.file_size > limits.max_metadata_bytes:
        raise limit_error(
            str(path), "max_metadata_bytes", f"a pickle of {largest.file_size:,} bytes", limits
        )


def _check_legacy(path: Path, allowed: frozenset[str], limits: ReaderLimits) -> TorchFileCheck:
    check = TorchFileCheck()
    claimed = 0
    storages: dict[str, int] = {}
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        size, position = len(data), 0
        for _ in range(_LEGACY_PICKLES):
            result = scan_pickle(data, position, allowed, limits, str(path))
            check.add(result)
            claimed += result.claimed
            for key, nbytes in result.storages.items():
                storages[key] = max(nbytes, storages.get(key, 0))
            position = result.end
    total = sum(storages.values())
    if total > size:
        raise CheckpointError(
            f"{path}: cannot be read as a torch file: its storages claim {total:,} bytes, "
            f"more than the file's {size:,} (a truncated, damaged or crafted file)"
        )
    _check_budget(path, "its tensors and arrays claim", claimed, size, limits)
    if check.tensors > limits.max_tensors:
        raise limit_error(str(path), "max_tensors", f"{check.tensors:,} tensors", limits)
    return check


def _check_budget(path: Path, what: str, nbytes: int, size: int, limits: ReaderLimits) -> None:
    budget = limits.budget(size)
    if nbytes > budget:
        # Name the term that gives most of the budget: raising the other would barely help.
        small = size * limits.max_inflation < limits.inflation_allowance
        limit = "inflation_allowance" if small else "max_inflation"
        raise limit_error(
            str(path), limit, f"{what} {nbytes:,} bytes from a file of {size:,} (the budget "
            f"is {budget:,})", limits,
        )  # fmt: skip
