"""The layout of a torch zip, held to the one that torch's reader and Python's read alike.

Two programs read a torch zip: Python's ``zipfile`` (for the reader's checks and the pickle
scan) and torch's own C++ reader (miniz, inside ``torch.load``). They find an archive's parts
differently, and a file can use each difference to show the scan one archive and torch
another (a benign ``data.pkl`` scanned, a hostile one run):

- Python reads the central directory just *before* the end record; when the end record states
  another offset it takes the difference for data prepended to the archive ("concat") and
  shifts every offset by it. miniz reads the directory *at* the offset stated.
- A zip64 locator states where the zip64 end record is; miniz reads it there, Python reads
  the 56 bytes just before the locator.
- miniz reads as many entries as the end record counts; Python reads entries until the
  directory's stated size is used up.
- miniz looks names up ignoring ASCII case; Python compares them exactly and cuts a name at
  its first NUL. Python checks a local header's name against its central entry; miniz never
  reads it.

So the layout must be one torch.save writes, read here from the raw bytes (memory-mapped),
where no two readings are possible:

1. the end record is the file's last 22 bytes, with no comment: Python takes it without
   searching, and miniz, scanning backwards for a whole record, finds it first;
2. when the 20 bytes before it are a zip64 locator (torch.save always writes one), the locator
   points at the zip64 end record just before it, which has no extensible data; the end
   record's numbers equal the zip64 ones or are saturated (0xFFFF, 0xFFFFFFFF), as miniz
   writes them;
3. the central directory lies exactly where the end records state and ends where they begin
   (``concat == 0``), and holds exactly the entries they count, no byte more;
4. names are ASCII without NUL (read the same in every encoding), unique ignoring case;
5. the first entry starts the file (torch checks for a local header at byte 0); each local
   header names its entry, with its compression method and sizes (or zeros, for sizes in a
   data descriptor); no two entries' bytes overlap, and none reaches the central directory.

:func:`check_layout` returns the entries as read here, in directory order, for the caller to
compare with what Python's zipfile and torch's reader find.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .limits import ReaderLimits, limit_error

__all__ = ["OTHER_ENTRIES", "ZipEntry", "check_layout"]

#: Entries a torch zip holds besides one record per storage (version, byteorder, …).
OTHER_ENTRIES = 64

_END = struct.Struct("<4sHHHHIIH")  # end of central directory record (22 bytes)
_END64 = struct.Struct("<4sQHHIIQQQQ")  # zip64 end record (56 bytes)
_LOCATOR = struct.Struct("<4sIQI")  # zip64 end record locator (20 bytes)
_CENTRAL = struct.Struct("<4sHHHHHHIIIHHHHHII")  # central directory header (46 bytes)
_LOCAL = struct.Struct("<4sHHHHHIIIHH")  # local file header (30 bytes)
_SIG_END, _SIG_END64, _SIG_LOCATOR = b"PK\x05\x06", b"PK\x06\x06", b"PK\x06\x07"
_SIG_CENTRAL, _SIG_LOCAL = b"PK\x01\x02", b"PK\x03\x04"
_FULL16, _FULL32 = 0xFFFF, 0xFFFF_FFFF
_ZIP64_EXTRA = 0x0001


@dataclass
class ZipEntry:
    """One entry as its records state it: its name, where its local header and its data
    start, how many bytes it stores and holds (compressed and inflated sizes), and how
    (``method`` 0: stored)."""

    name: str
    header: int
    size: int
    inflated: int
    method: int
    data: int = -1  # known once the local header is read


def check_layout(path: Path, limits: ReaderLimits) -> list[ZipEntry]:
    """The entries of the torch zip at ``path``, once its layout admits one reading only.

    Returns:
        the entries in central directory order (torch's reader takes its archive folder from
        the first one).

    Raises:
        CheckpointError: a cut or damaged archive, more entries than ``max_tensors`` allows,
            or a layout that torch's reader and Python's zipfile could read differently.
    """
    with path.open("rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
        try:
            return _Layout(path, data, limits).entries()
        except (struct.error, IndexError, UnicodeDecodeError) as exc:
            raise _damaged(path, f"a record runs past the end ({type(exc).__name__})") from None


def _damaged(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: a damaged or truncated zip archive ({why}); re-download or re-save it"
    )


def _ambiguous(path: Path, why: str) -> CheckpointError:
    return CheckpointError(
        f"{path}: refused: a zip archive that torch's reader and Python's zipfile could read "
        f"as two different archives ({why}); torch.save never writes this, so the file is "
        "damaged or crafted. Re-download it, or re-save it with torch.save where you trust it"
    )


class _Layout:
    """The raw records of one archive, read and checked in the order of the module docstring."""

    def __init__(self, path: Path, data: mmap.mmap, limits: ReaderLimits):
        self.path, self.data, self.limits = path, data, limits

    def entries(self) -> list[ZipEntry]:
        count, size, offset, end = self.directory()
        if count > self.limits.max_tensors + OTHER_ENTRIES:
            found = f"a zip of {count:,} entries"
            raise limit_error(str(self.path), "max_tensors", found, self.limits)
        if offset + size != end:  # Python's zipfile would shift every offset by the gap
            raise _ambiguous(
                self.path,
                f"its central directory of {size:,} bytes at byte {offset:,} does not end "
                f"where its end records begin, at byte {end:,}: data before the archive, or "
                "a second central directory",
            )
        entries = self.central(offset, size, count)
        self.check_names(entries)
        self.check_extents(entries, offset)
        return entries

    # ---- 1-3: the end records and where they put the central directory ------------------

    def directory(self) -> tuple[int, int, int, int]:
        """Entry count, directory size, directory offset, and where the end records begin."""
        data = self.data
        end = len(data) - _END.size
        if end < 0 or data[end : end + 4] != _SIG_END:
            raise _damaged(
                self.path,
                "its end record is not the last 22 bytes of the file: cut short, or followed "
                "by a comment or other data",
            )
        _, disk, cd_disk, here, count, size, offset, comment = _END.unpack_from(data, end)
        if comment or disk or cd_disk or here != count:
            raise _damaged(self.path, "its end record has a comment or spans several disks")
        locator = end - _LOCATOR.size
        if locator < 0 or data[locator : locator + 4] != _SIG_LOCATOR:
            return count, size, offset, end
        return (*self.zip64(locator, count, size, offset), locator - _END64.size)

    def zip64(self, locator: int, count: int, size: int, offset: int) -> tuple[int, int, int]:
        """The zip64 end record's numbers, where both readers find the same record."""
        _, disk, where, disks = _LOCATOR.unpack_from(self.data, locator)
        record = locator - _END64.size
        if record < 0 or where != record or disk != 0 or disks != 1:
            raise _ambiguous(
                self.path,
                f"its zip64 locator points at byte {where:,}, not at the zip64 end record "
                f"just before it (byte {max(record, 0):,})",
            )
        sig, length, _, _, disk, cd_disk, here, count64, size64, offset64 = _END64.unpack_from(
            self.data, record
        )
        if sig != _SIG_END64 or length != _END64.size - 12 or disk or cd_disk or here != count64:
            raise _ambiguous(
                self.path,
                "its zip64 end record is missing, spans several disks or holds extensible data",
            )
        # miniz writes min(value, 0xFFFF...) in the end record; both readers take zip64's.
        stated = ((count, count64, _FULL16), (size, size64, _FULL32), (offset, offset64, _FULL32))
        if any(old not in (new, full) for old, new, full in stated):
            raise _ambiguous(self.path, "its end record and its zip64 end record disagree")
        return count64, size64, offset64

    def central(self, offset: int, size: int, count: int) -> list[ZipEntry]:
        """The directory's entries: exactly ``count`` records filling exactly ``size`` bytes
        (miniz reads ``count`` entries, Python reads ``size`` bytes)."""
        data, entries, at, stop = self.data, [], offset, offset + size
        while at < stop and len(entries) < count:
            if data[at : at + 4] != _SIG_CENTRAL:
                raise _damaged(self.path, f"no central directory entry at byte {at:,}")
            fields = _CENTRAL.unpack_from(data, at)
            method, csize, usize, header = fields[4], fields[8], fields[9], fields[16]
            name_end = at + _CENTRAL.size + fields[10]
            extra = bytes(data[name_end : name_end + fields[11]])
            usize, csize, header = self.zip64_extra(extra, usize, csize, header)
            name = self.name(bytes(data[at + _CENTRAL.size : name_end]))
            entries.append(ZipEntry(name, header, csize, usize, method))
            at = name_end + fields[11] + fields[12]
        if len(entries) != count or at != stop:
            raise _ambiguous(
                self.path,
                f"its end record counts {count:,} entries in {size:,} bytes, and its central "
                "directory holds another number of entries or bytes",
            )
        return entries

    def zip64_extra(self, extra: bytes, usize: int, csize: int, header: int) -> tuple[int, ...]:
        """Sizes and offset, taken from the zip64 extra field where the header saturates them."""
        wanted = [value == _FULL32 for value in (usize, csize, header)]
        if not any(wanted):
            return usize, csize, header  # neither reader looks at the extra field then
        fields, at = [], 0
        while at + 4 <= len(extra):
            kind, length = struct.unpack_from("<HH", extra, at)
            if kind == _ZIP64_EXTRA:
                fields.append(extra[at + 4 : at + 4 + length])
            at += 4 + length
        # miniz reads the first zip64 field, Python each in turn: only one leaves no choice.
        if len(fields) != 1 or len(fields[0]) < 8 * sum(wanted):
            raise _ambiguous(self.path, "an entry's zip64 sizes are missing or given twice")
        values, taken = [usize, csize, header], 0
        for index, needed in enumerate(wanted):  # in this order, as both readers take them
            if needed:
                values[index] = struct.unpack_from("<Q", fields[0], taken)[0]
                taken += 8
        return tuple(values)

    # ---- 4-5: names, local headers, extents ---------------------------------------------

    def name(self, raw: bytes) -> str:
        # ASCII reads the same as UTF-8 and as cp437 (Python picks by a flag; miniz compares
        # bytes); Python would cut a name at a NUL, miniz would not.
        if not raw.isascii() or b"\0" in raw:
            raise _ambiguous(self.path, f"an entry name that is not plain ASCII: {raw[:80]!a}")
        return raw.decode("ascii")

    def check_names(self, entries: list[ZipEntry]) -> None:
        seen: dict[str, str] = {}
        for entry in entries:
            folded = entry.name.lower()  # miniz's lookup folds ASCII case
            if folded in seen:
                raise _ambiguous(
                    self.path,
                    f"two entries named {seen[folded]!a} and {entry.name!a}: one name to "
                    "torch's reader",
                )
            seen[folded] = entry.name

    def check_extents(self, entries: list[ZipEntry], directory: int) -> None:
        """Local headers agree with their entries, which start the file and never overlap."""
        placed = sorted(entries, key=lambda entry: entry.header)
        if placed and placed[0].header != 0:
            raise _ambiguous(self.path, "its first entry does not start the file (data before it)")
        for entry, after in zip(placed, [*placed[1:], None], strict=True):
            end = self.local(entry) + entry.size
            if end > (directory if after is None else after.header):
                other = "the central directory" if after is None else ascii(after.name)
                raise _ambiguous(self.path, f"entry {entry.name!a} overlaps {other}")

    def local(self, entry: ZipEntry) -> int:
        """Check the local header of ``entry``; return (and record) where its data starts."""
        data, at = self.data, entry.header
        if data[at : at + 4] != _SIG_LOCAL:
            raise _damaged(self.path, f"no local header for {entry.name!a} at byte {at:,}")
        fields = _LOCAL.unpack_from(data, at)
        method, csize, usize, name_len, extra_len = (
            fields[3], fields[7], fields[8], fields[9], fields[10]
        )  # fmt: skip
        name = bytes(data[at + _LOCAL.size : at + _LOCAL.size + name_len])
        # Zeros: the sizes follow the data (torch.save); all ones: they are in a zip64 field.
        sizes = csize in (0, _FULL32, entry.size) and usize in (0, _FULL32, entry.inflated)
        if name != entry.name.encode() or not sizes or method != entry.method:
            raise _ambiguous(
                self.path, f"the local header of {entry.name!a} disagrees with its directory entry"
            )
        entry.data = at + _LOCAL.size + name_len + extra_len
        return entry.data
