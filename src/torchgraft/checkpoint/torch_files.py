"""The two layouts ``torch.save`` writes, checked before torch reads them.

- **zip** (torch >= 1.6): ``<archive>/data.pkl`` (the pickle), ``<archive>/data/<key>`` (one
  record per storage, stored uncompressed so that it can be memory-mapped), and small records
  (``version``, ``byteorder``). Torch reads it with its own reader (miniz), the checks here
  with Python's zipfile, so first its layout must admit one reading only
  (:mod:`.zip_layout`: one end record at the very end, the central directory where it says,
  local headers that agree, no overlaps, names unique ignoring case), and both readers must
  list the same entries. Then: all entries lie in one folder (torch reads only the folder of
  the first entry); it is not TorchScript; entries are stored, not compressed (a compressed
  entry is inflated into memory whole: a 2 MB file can inflate to gigabytes) and few enough;
  their declared sizes fit the inflation budget. Last, ``<archive>/data.pkl`` is read by both
  readers, refused unless the bytes are equal, and scanned (:mod:`.pickle_scan`): exactly
  the bytes torch will unpickle. Each storage it claims must fit the record that holds it.
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

import torch

from ..errors import CheckpointError
from .limits import ReaderLimits, limit_error
from .pickle_scan.scan import PickleScan, scan_pickle
from .reasons import short_reason
from .zip_layout import ZipEntry, check_layout

__all__ = ["TorchFileCheck", "check_torch_file"]

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
    path: Path,
    kind: str,
    allowed: frozenset[str],
    limits: ReaderLimits,
    scan: bool,
    list_types: frozenset[str] = frozenset(),
) -> TorchFileCheck:
    """Check a ``torch`` (zip) or ``torch-legacy`` file before ``torch.load`` reads it.

    Args:
        path: the file.
        kind: ``torch`` or ``torch-legacy`` (:func:`.io.sniff_format`).
        allowed: the global names torch will accept in this load.
        limits: the reader's limits.
        scan: scan the pickles (False only for ``trust=True``, where the file may run code
            anyway); the zip's layout is checked either way.
        list_types: the allowed globals that are list subclasses (APPEND may fill them).

    Raises:
        CheckpointError: damage, a crafted layout, or a limit exceeded.
    """
    if kind == "torch":
        return _check_zip(path, allowed, limits, scan, list_types)
    return _check_legacy(path, allowed, limits, list_types) if scan else TorchFileCheck()


def _check_zip(
    path: Path, allowed: frozenset[str], limits: ReaderLimits, scan: bool, list_types: frozenset
) -> TorchFileCheck:
    size = path.stat().st_size
    entries = check_layout(path, limits)
    pickle = _check_folder(path, entries)
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            _same_entries(path, infos, entries)
            _check_entries(path, infos, size, limits)
            data = archive.read(pickle.name) if scan else b""
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
    if _read_as_torch(path, pickle) != data:
        raise CheckpointError(
            f"{path}: refused: torch's reader and Python's zipfile read different bytes for "
            f"{pickle.name!a} (a damaged or crafted file); re-download it, or re-save it with "
            "torch.save where you trust it"
        )
    result = scan_pickle(data, 0, allowed, limits, str(path), list_types)
    check.add(result)
    prefix = pickle.name[: -len("data.pkl")]
    records = {info.filename: info.file_size for info in infos}
    for key, nbytes in result.storages.items():
        held = records.get(f"{prefix}data/{key}")
        if held is not None and nbytes > held:
            raise CheckpointError(
                f"{path}: refused: a storage claims {nbytes:,} bytes but its record "
                f"holds {held:,} (a damaged or crafted file)"
            )
    _check_budget(path, "its tensors and arrays claim", result.claimed, size, limits)
    if check.tensors > limits.max_tensors:
        raise limit_error(str(path), "max_tensors", f"{check.tensors:,} tensors", limits)
    return check


def _check_folder(path: Path, entries: list[ZipEntry]) -> ZipEntry:
    """The ``data.pkl`` torch will read: in the folder of the first entry, where all are."""
    names = [entry.name for entry in entries]
    if any(name.endswith("/constants.pkl") for name in names):
        raise CheckpointError(
            f"{path}: a TorchScript archive, which cannot be read without running its code; "
            "save model.state_dict() with torch.save, or load it with torch.jit.load yourself"
        )
    folder = names[0].partition("/")[0] + "/" if names else ""
    pickle = next((e for e in entries if e.name == f"{folder}data.pkl"), None)
    if pickle is None or "/" not in names[0]:
        shown = ", ".join(ascii(name) for name in names[:3]) or "nothing"
        raise CheckpointError(
            f"{path}: a zip archive but not a torch checkpoint (no data.pkl in the folder of "
            f"its first entry; holds {shown})"
        )
    stray = next((name for name in names if not name.startswith(folder)), None)
    if stray is not None:  # torch reads one folder, the checks would read the others too
        raise CheckpointError(
            f"{path}: refused: a torch zip with entries outside its folder {folder[:-1]!a} "
            f"({stray!a}); torch.save never writes this, so the file is damaged or crafted. "
            "Re-download it, or re-save it with torch.save where you trust it"
        )
    return pickle


def _same_entries(path: Path, infos: list[zipfile.ZipInfo], entries: list[ZipEntry]) -> None:
    """Python's zipfile lists the entries the raw records hold, each where they put it."""
    python = [(i.filename, i.header_offset, i.compress_size, i.file_size) for i in infos]
    raw = [(e.name, e.header, e.size, e.inflated) for e in entries]
    if python != raw:
        raise CheckpointError(
            f"{path}: refused: Python's zipfile lists other entries than the archive's records "
            "hold (a damaged or crafted file); re-download it, or re-save it with torch.save "
            "where you trust it"
        )


def _read_as_torch(path: Path, pickle: ZipEntry) -> bytes | None:
    """``data.pkl`` as ``torch.load`` reads it: through torch's own zip reader, opened on a
    file object as torch.load opens it, once the layout is known to put it at
    ``pickle.data`` (a crafted size cannot make torch allocate more than was checked)."""
    record = pickle.name.partition("/")[2]
    try:
        with path.open("rb") as handle:
            reader = torch._C.PyTorchFileReader(handle)
            if reader.get_record_offset(record) != pickle.data:
                return None  # another entry: not the bytes that were measured and read
            return reader.get_record(record)
    except (RuntimeError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path}: a damaged or truncated zip archive (torch's reader: "
            f"{short_reason(exc)}); re-download or re-save it"
        ) from None


def _check_entries(path: Path, infos: list[zipfile.ZipInfo], size: int, limits) -> None:
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
    pickles = [info for info in infos if info.filename.endswith("/data.pkl")]
    largest = max((info.file_size for info in pickles), default=0)
    if largest > limits.max_metadata_bytes:
        raise limit_error(str(path), "max_metadata_bytes", f"a pickle of {largest:,} bytes", limits)


def _check_legacy(
    path: Path, allowed: frozenset[str], limits: ReaderLimits, list_types: frozenset
) -> TorchFileCheck:
    check = TorchFileCheck()
    claimed = 0
    storages: dict[str, int] = {}
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        size, position = len(data), 0
        for _ in range(_LEGACY_PICKLES):
            result = scan_pickle(data, position, allowed, limits, str(path), list_types)
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
