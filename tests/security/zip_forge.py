"""Zip archives forged record by record, for the tests of a torch zip's layout.

Python's ``zipfile`` writer cannot make the archives these tests need (two central
directories, a local header naming another file, overlapping entries, a zip64 locator that
points elsewhere), so the records are packed here with ``struct``, as the zip specification
(APPNOTE 4.3) lays them out:

    [local header, name, extra, data]...  [central header, name, extra]...
    [zip64 end record, zip64 locator]     (optional, as torch.save always writes them)
    end record [comment]

:func:`two_directories` builds the archive of issue 17 item 4: the end record points torch's
reader (miniz, which trusts the offset it states) at one central directory, while Python's
``zipfile`` (which reads the directory just before the end record and shifts every offset
by the difference) finds another.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

LOCAL, CENTRAL, END = b"PK\x03\x04", b"PK\x01\x02", b"PK\x05\x06"
END64, LOCATOR64 = b"PK\x06\x06", b"PK\x06\x07"
#: Bit 11 of the flags: names are UTF-8 (torch.save sets it, with bit 3: data descriptor).
UTF8 = 0x800


@dataclass
class Entry:
    """One member: its name and bytes, and what a forger may make its records say."""

    name: str
    data: bytes
    local_name: str | None = None  # the name the local header gives (default: ``name``)
    local_extra: bytes = b""
    central_extra: bytes = b""
    method: int = 0  # 0: stored
    zip64: bool = False  # sizes and offset in a zip64 extra field, as for files over 4 GiB


def torch_entries(data_pkl: bytes, records: dict[str, bytes] | None = None,
                  folder: str = "archive") -> list[Entry]:  # fmt: skip
    """The members of a torch.save zip: ``data.pkl``, storage records, ``version``."""
    records = {"0": bytes(16)} if records is None else records
    entries = [Entry(f"{folder}/data.pkl", data_pkl), Entry(f"{folder}/byteorder", b"little")]
    entries += [Entry(f"{folder}/data/{key}", payload) for key, payload in records.items()]
    return [*entries, Entry(f"{folder}/version", b"3\n")]


def local_record(entry: Entry) -> bytes:
    name = (entry.name if entry.local_name is None else entry.local_name).encode()
    header = struct.pack(
        "<4sHHHHHIIIHH", LOCAL, 20, UTF8, entry.method, 0, 0, zlib.crc32(entry.data),
        len(entry.data), len(entry.data), len(name), len(entry.local_extra),
    )  # fmt: skip
    return header + name + entry.local_extra + entry.data


def central_record(entry: Entry, offset: int) -> bytes:
    name, size, extra = entry.name.encode(), len(entry.data), entry.central_extra
    if entry.zip64:  # the header's fields saturated, the values in the extra field
        extra = struct.pack("<HHQQQ", 0x0001, 24, size, size, offset) + extra
        size = offset = 0xFFFF_FFFF
    header = struct.pack(
        "<4sHHHHHHIIIHHHHHII", CENTRAL, 45 if entry.zip64 else 20, 20, UTF8, entry.method,
        0, 0, zlib.crc32(entry.data), size, size, len(name), len(extra), 0, 0, 0, 0, offset,
    )  # fmt: skip
    return header + name + extra


def end_record(count: int, size: int, offset: int, comment: bytes = b"") -> bytes:
    fields = (count, count, size, offset, len(comment))
    return struct.pack("<4sHHHHIIH", END, 0, 0, *fields) + comment


#: An end record with every number saturated, as miniz writes it for a zip64 archive of
#: 65,535 entries or more: readers must take the numbers from the zip64 end record.
SATURATED_END = struct.pack("<4sHHHHIIH", END, 0, 0, 0xFFFF, 0xFFFF, 0xFFFF_FFFF, 0xFFFF_FFFF, 0)


def zip64_end(count: int, size: int, offset: int) -> bytes:
    """A zip64 end record as torch.save writes it (44 bytes after the size field)."""
    return struct.pack("<4sQHHIIQQQQ", END64, 44, 0x031E, 45, 0, 0, count, count, size, offset)


def zip64_locator(offset: int) -> bytes:
    return struct.pack("<4sIQI", LOCATOR64, 0, offset, 1)


def locals_of(entries: list[Entry], start: int = 0) -> tuple[bytes, list[int]]:
    """The local records of ``entries`` one after another from ``start``, and their offsets."""
    parts, offsets, at = [], [], start
    for entry in entries:
        record = local_record(entry)
        parts.append(record)
        offsets.append(at)
        at += len(record)
    return b"".join(parts), offsets


def directory(entries: list[Entry], offsets: list[int]) -> bytes:
    return b"".join(central_record(e, o) for e, o in zip(entries, offsets, strict=True))


def ending(count: int, size: int, offset: int, at: int, zip64: bool, comment: bytes = b"") -> bytes:
    """The end records, written at ``at``, of a directory of ``count`` entries, ``size``
    bytes, at ``offset``."""
    if not zip64:
        return end_record(count, size, offset, comment)
    locator = zip64_locator(at)
    return zip64_end(count, size, offset) + locator + end_record(count, size, offset, comment)


def archive(entries: list[Entry], zip64: bool = True, comment: bytes = b"",
            saturated: bool = False) -> bytes:  # fmt: skip
    """A plain archive of ``entries`` (zip64 end records by default, as torch.save writes;
    ``saturated``: the end record's numbers all ones, as for 65,535 entries or more)."""
    body, offsets = locals_of(entries)
    cd = directory(entries, offsets)
    at = len(body) + len(cd)
    end = ending(len(entries), len(cd), len(body), at, zip64, comment)
    return body + cd + (end[: -len(SATURATED_END)] + SATURATED_END if saturated else end)


def two_directories(shown: list[Entry], hidden: list[Entry], zip64: bool = True) -> bytes:
    """One file, two archives: Python's zipfile reads ``shown``, torch's miniz ``hidden``.

    Layout: ``hidden``'s local records (first, so the file opens with a local header as
    torch requires), ``shown``'s, ``hidden``'s central directory, ``shown``'s, and one end
    record that states ``hidden``'s directory's offset. Both directories must be the same
    size (same names in the same order), the size the end record states. Python's zipfile
    reads that many bytes just before the end record (``shown``'s directory) and adds
    ``concat`` (its distance from the stated offset) to every offset it finds there, so
    ``shown``'s directory stores its offsets less ``concat``.
    """
    hidden_body, hidden_offsets = locals_of(hidden)
    shown_body, shown_offsets = locals_of(shown, start=len(hidden_body))
    hidden_cd = directory(hidden, hidden_offsets)
    concat = len(hidden_cd)  # shown's directory follows hidden's
    shown_cd = directory(shown, [offset - concat for offset in shown_offsets])
    assert len(shown_cd) == len(hidden_cd), "the two directories must be the same size"
    assert all(offset >= concat for offset in shown_offsets)
    start = len(hidden_body) + len(shown_body)
    return (
        hidden_body + shown_body + hidden_cd + shown_cd
        + ending(len(hidden), len(hidden_cd), start, start + 2 * concat, zip64)
    )  # fmt: skip


def two_zip64_records(shown: list[Entry], hidden: list[Entry]) -> bytes:
    """One file, two archives, told apart by the zip64 locator alone.

    Layout: ``hidden`` whole up to its zip64 end record, then ``shown`` with its own, the
    locator (pointing at ``hidden``'s zip64 end record) and a saturated end record. miniz
    follows the locator; Python's zipfile reads the zip64 end record just before the locator
    and finds ``shown``'s directory exactly where that record says (``concat`` is 0).
    """
    hidden_body, hidden_offsets = locals_of(hidden)
    hidden_cd = directory(hidden, hidden_offsets)
    hidden_part = hidden_body + hidden_cd + zip64_end(len(hidden), len(hidden_cd), len(hidden_body))
    shown_body, shown_offsets = locals_of(shown, start=len(hidden_part))
    shown_cd = directory(shown, shown_offsets)
    shown_cd_at = len(hidden_part) + len(shown_body)
    return (
        hidden_part + shown_body + shown_cd + zip64_end(len(shown), len(shown_cd), shown_cd_at)
        + zip64_locator(len(hidden_body) + len(hidden_cd)) + SATURATED_END
    )  # fmt: skip
