"""safetensors files, read here: the header checked entry by entry, the tensors mapped.

The format: 8 bytes (little-endian length N), N bytes of JSON header
``{name: {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}``,
then the data, every tensor contiguous and little-endian, the offsets relative to the data.

Why not the ``safetensors`` package's reader: it costs about 50 µs of Python per tensor
(a million tiny tensors took 36 s and 2 GB), and a lying header surfaces as a Rust panic.
Here the header's length and entry count are checked against the reader's limits before
it is parsed, each entry is checked with a message of its own (dtype, shape, offsets that
must tile the data exactly, as the format requires), and each tensor is one ``as_strided``
view of a single copy-on-write mapping of the file (about 8 µs).
"""

from __future__ import annotations

import json
import math
import struct
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from .limits import ReaderLimits, limit_error

__all__ = ["DTYPES", "read_safetensors"]

#: safetensors dtype names -> torch dtypes (those this torch has).
DTYPES: dict[str, torch.dtype] = {
    name: dtype
    for name, attribute in {
        "BOOL": "bool", "U8": "uint8", "I8": "int8", "I16": "int16", "U16": "uint16",
        "I32": "int32", "U32": "uint32", "I64": "int64", "U64": "uint64", "F16": "float16",
        "BF16": "bfloat16", "F32": "float32", "F64": "float64", "C64": "complex64",
        "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2", "F8_E8M0": "float8_e8m0fnu",
    }.items()
    if isinstance(dtype := getattr(torch, attribute, None), torch.dtype)
}  # fmt: skip


def read_safetensors(
    path: Path, mmap: bool, limits: ReaderLimits
) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors (sorted by name) and the header's ``__metadata__`` of a safetensors file.

    Args:
        path: a regular file.
        mmap: map the file copy-on-write (tensors cost page cache, and writing into one never
            reaches the file); False reads it into memory once.
        limits: ``max_metadata_bytes`` bounds the header, ``max_tensors`` its entries.

    Raises:
        CheckpointError: a truncated or damaged file, or a limit exceeded (naming the file).
    """
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise _damaged(path, "shorter than its 8-byte header length")
        (length,) = struct.unpack("<Q", head)
        if length > size - 8:
            raise CheckpointError(
                f"{path}: a truncated safetensors file (its header alone claims {length:,} "
                f"bytes, the file has {size:,}); re-download or re-save it"
            )
        if length > limits.max_metadata_bytes:
            raise limit_error(
                str(path), "max_metadata_bytes", f"a header of {length:,} bytes", limits
            )
        raw = handle.read(length)
    header, metadata = _parse(path, raw, limits)
    entries = _entries(path, header, size - 8 - length)
    if not entries:
        raise CheckpointError(f"{path}: a safetensors file with no tensors in it")
    return _tensors(path, entries, size, 8 + length, mmap), metadata


def _parse(path: Path, raw: bytes, limits: ReaderLimits) -> tuple[dict, dict[str, str]]:
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError) as exc:  # JSON and UTF-8 errors are ValueErrors
        raise _damaged(path, f"its header is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(header, dict):
        raise _damaged(path, "its header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()
    ):
        raise _damaged(path, "its __metadata__ is not a map of strings to strings")
    if len(header) > limits.max_tensors:
        raise limit_error(str(path), "max_tensors", f"{len(header):,} tensors", limits)
    return header, metadata


def _entries(
    path: Path, header: dict, data_size: int
) -> list[tuple[str, torch.dtype, list, int, int]]:
    """``(name, dtype, shape, begin, end)`` by name, each checked; the offsets tile the data."""
    entries = []
    for name in sorted(header):
        info = header[name]
        if not isinstance(info, dict):
            raise _damaged(path, f"entry {_name(name)} is not an object")
        dtype = DTYPES.get(info.get("dtype")) if isinstance(info.get("dtype"), str) else None
        if dtype is None:
            raise _damaged(path, f"entry {_name(name)} has dtype {_value(info.get('dtype'))}")
        shape, offsets = info.get("shape"), info.get("data_offsets")
        if not _numbers(shape, None) or len(shape) > 64:
            raise _damaged(path, f"entry {_name(name)} has shape {_value(shape)}")
        if not _numbers(offsets, 2) or offsets[0] > offsets[1]:
            raise _damaged(path, f"entry {_name(name)} has data_offsets {_value(offsets)}")
        needed = math.prod(shape) * dtype.itemsize
        if needed != offsets[1] - offsets[0]:
            raise _damaged(
                path, f"entry {_name(name)}: its shape needs {needed:,} bytes, its offsets "
                f"hold {offsets[1] - offsets[0]:,}",
            )  # fmt: skip
        entries.append((name, dtype, shape, offsets[0], offsets[1]))
    end = 0
    for name, _dtype, _shape, begin, stop in sorted(entries, key=lambda e: (e[3], e[4])):
        if begin != end:
            where = "overlaps another" if begin < end else "leaves a gap before it"
            raise _damaged(path, f"the data of entry {_name(name)} {where} (a lying offset)")
        end = stop
    if end != data_size:
        if end > data_size:
            raise _damaged(path, f"its offsets run {end - data_size:,} bytes past the end")
        raise _damaged(path, f"{data_size - end:,} bytes of data belong to no tensor")
    return entries


def _tensors(
    path: Path, entries: list, size: int, base: int, mmap: bool
) -> dict[str, torch.Tensor]:
    if mmap:
        flat = torch.from_file(str(path), shared=False, size=size, dtype=torch.uint8)
    else:
        flat = torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
    if flat.numel() != size:  # the file changed under us
        raise _damaged(path, "its size changed while it was read")
    typed: dict[torch.dtype, torch.Tensor] = {}
    tensors = {}
    for name, dtype, shape, begin, end in entries:
        itemsize, start = dtype.itemsize, base + begin
        if begin == end:
            tensors[name] = torch.empty(shape, dtype=dtype)
        elif start % itemsize == 0:  # one view of the whole file per dtype, then as_strided
            if dtype not in typed:
                typed[dtype] = flat[: size - size % itemsize].view(dtype)
            tensors[name] = typed[dtype].as_strided(shape, _strides(shape), start // itemsize)
        else:  # the format does not promise alignment: copy the few that are not aligned
            tensors[name] = flat[start : base + end].clone().view(dtype).view(shape)
    return tensors


def _strides(shape: list[int]) -> list[int]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return strides[::-1]


def _numbers(value: Any, length: int | None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(type(n) is int and 0 <= n < 1 << 62 for n in value)
    )


def _damaged(path: Path, reason: str) -> CheckpointError:
    return CheckpointError(f"{path}: a damaged safetensors file: {reason}")


def _name(name: str) -> str:
    return ascii(name[:100])


def _value(value: Any) -> str:
    return ascii(json.dumps(value)[:60]) if not isinstance(value, str) else ascii(value[:60])
