"""The data's limits: how much memory one image, one list file and a dataset's index may take.

Training data is someone else's files, like a checkpoint. What a file can choose (its pixel
count and mode, its length, the number of rows of a CSV) is checked against a bound *before*
the memory is spent, and a file over one is refused with a :class:`~torchgraft.errors.DataError`
that names the file, the estimate, the limit and how to raise it. Images are checked from
their header (:func:`~torchgraft.data.modes.decode_cost`); an image over a limit is a bad
file like a corrupt one (listed, the run stopped; skipped with ``data.on_bad_image: skip``).

=====================  ===================================  ===================================
limit                  environment variable                 what it bounds (default)
=====================  ===================================  ===================================
max_decode_bytes       TORCHGRAFT_MAX_DECODE_BYTES          memory one image may take to decode
                                                            and convert, estimated from its
                                                            header (1 GiB); Pillow's pixel
                                                            limit ``MAX_IMAGE_PIXELS`` is kept
                                                            as well
max_image_file_bytes   TORCHGRAFT_MAX_IMAGE_FILE_BYTES      bytes of one image file (1 GiB)
max_list_bytes         TORCHGRAFT_MAX_LIST_BYTES            bytes of a CSV file (1 GiB)
=====================  ===================================  ===================================

A dataset's *index* — one path and one label per sample, kept in memory whether the pixels
are or not — is bounded by ``data.memory_limit_mb``: :data:`SAMPLE_INDEX_BYTES` per sample
(measured) plus the paths' lengths must fit, or the data is refused while it is being
listed, long before memory runs out (:class:`IndexBudget`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import DataError
from ..wording import in_cli, option

__all__ = [
    "DEFAULT_MEMORY_LIMIT_MB",
    "SAMPLE_INDEX_BYTES",
    "DataLimits",
    "IndexBudget",
    "env_var",
    "index_bytes",
    "resolve_data_limits",
]

_MIB = 1 << 20
_GIB = 1 << 30

#: ``data.memory_limit_mb`` when none is given (the run config's default too).
DEFAULT_MEMORY_LIMIT_MB = 1024

#: Peak bytes of Python bookkeeping per sample while a dataset is listed, prepared and
#: fingerprinted, besides the characters of its path: the path's string object, the label,
#: the list slots holding them, the decode's duplicate table. Measured as peak RSS growth
#: over 1,000,000-row CSVs: 208 bytes a row with 34-character paths (so 174 + the path),
#: 117-167 with 9-character ones; tests/security/test_data_memory.py checks it still holds.
#: The pixels kept in memory come on top.
SAMPLE_INDEX_BYTES = 200


@dataclass(frozen=True)
class DataLimits:
    """Bounds on what one image or list file may cost (see the module docstring's table).

    Example:
        >>> DataLimits().max_decode_bytes
        1073741824
        >>> load_image("huge.tif", limits=DataLimits(max_decode_bytes=4 << 30))  # trusted
    """

    max_decode_bytes: int = _GIB
    max_image_file_bytes: int = _GIB
    max_list_bytes: int = _GIB

    def __post_init__(self) -> None:
        for name in _FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise DataError(f"data limit {name} must be a non-negative integer, got {value!r}")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> DataLimits:
        """The defaults, with any ``TORCHGRAFT_<LIMIT>`` environment variable applied.

        Raises:
            DataError: a variable that is not a non-negative whole number.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for name in _FIELDS:
            raw = environ.get(env_var(name))
            if raw is None:
                continue
            try:
                values[name] = value = int(raw.replace("_", ""))
            except ValueError:
                value = -1
            if value < 0:
                raise DataError(
                    f"{env_var(name)}={raw!a} is not a non-negative whole number of bytes; "
                    "unset it or fix it"
                )
        return cls(**values) if values else _DEFAULTS

    def how_to_raise(self, limit: str) -> str:
        """How the caller raises ``limit``: the environment variable (and, in Python, the
        argument)."""
        variable = env_var(limit)
        if in_cli():
            return f"set {variable} to a higher value"
        return f"pass limits=DataLimits({limit}=...) or set {variable}"


_FIELDS = tuple(field.name for field in dataclasses.fields(DataLimits))
_DEFAULTS = DataLimits()


def env_var(limit: str) -> str:
    """``max_decode_bytes`` -> ``TORCHGRAFT_MAX_DECODE_BYTES``."""
    return "TORCHGRAFT_" + limit.upper()


def resolve_data_limits(limits: DataLimits | None) -> DataLimits:
    """``limits`` as given, or the defaults with the environment applied (read at each call)."""
    if limits is None:
        return DataLimits.from_env()
    if not isinstance(limits, DataLimits):
        raise DataError(f"limits must be a DataLimits, got {type(limits).__name__}")
    return limits


def index_bytes(samples: int, name_bytes: int = 0) -> int:
    """The memory the index of ``samples`` samples takes, their names ``name_bytes`` long in
    all: :data:`SAMPLE_INDEX_BYTES` each, plus the names."""
    return samples * SAMPLE_INDEX_BYTES + name_bytes


@dataclass
class IndexBudget:
    """The index of one dataset as it is being listed, against ``data.memory_limit_mb``.

    Every split and folder of a dataset adds to one budget; :meth:`add` refuses the entry
    that goes over, so a list of millions of rows stops at the limit, not when memory runs
    out.
    """

    memory_limit_mb: int | None = None
    samples: int = 0
    name_bytes: int = 0

    @property
    def limit_mb(self) -> int:
        return DEFAULT_MEMORY_LIMIT_MB if self.memory_limit_mb is None else self.memory_limit_mb

    def add(self, where: object, samples: int = 1, name_bytes: int = 0) -> None:
        """Count ``samples`` more entries (their names ``name_bytes`` long).

        Raises:
            DataError: the index is now over the limit: naming ``where`` (the CSV or
                folder), how many samples were listed, the memory they take, the limit and
                the option that raises it.
        """
        self.samples += samples
        self.name_bytes += name_bytes
        need = index_bytes(self.samples, self.name_bytes)
        if need <= self.limit_mb * _MIB:
            return
        limit = self.limit_mb
        raise DataError(
            f"{where}: {self.samples:,} samples listed so far already need about "
            f"{need / _MIB:,.0f} MiB for their paths and labels alone ({SAMPLE_INDEX_BYTES} "
            f"bytes each plus the path), over the data's memory limit of {limit:,} MiB; raise "
            f"{option('memory_limit_mb', 2 * limit)} if the machine has the memory, or train "
            "on a smaller list"
        )
