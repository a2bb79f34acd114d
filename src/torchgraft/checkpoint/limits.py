"""The checkpoint reader's limits: how much work and memory a file may ask for.

A checkpoint is data from someone else, and its size is the only thing the reader knows before
reading it. Every amount a file can choose (how many tensors, how deeply its containers nest,
how many pickle instructions, how many bytes it claims its tensors, arrays and zip entries
hold, how long its metadata is) is checked against one of these limits *before* the work is
done, and a file over a limit is refused with a :class:`~torchgraft.errors.CheckpointError`
that names the limit and how to raise it.

The defaults admit every real checkpoint we know of with a wide margin (a ResNet-50 state_dict
uses 320 tensors, depth 5, 11,000 pickle instructions, 1.0x its file size) and keep a hostile
file to seconds and a few hundred MB. Raise one for a file you trust, in Python with
``read_checkpoint(path, limits=ReaderLimits(max_tensors=500_000))``, or for any command with
the environment variable named in the table (``TORCHGRAFT_MAX_TENSORS=500000``).

=====================  ==========================  =============================================
limit                  environment variable        what it bounds (default)
=====================  ==========================  =============================================
max_tensors            TORCHGRAFT_MAX_TENSORS      tensors in one read, all shards together
                                                   (100,000)
max_depth              TORCHGRAFT_MAX_DEPTH        nesting of containers in a pickle (100)
max_pickle_ops         TORCHGRAFT_MAX_PICKLE_OPS   instructions of one pickle that make or
                                                   remember an object: they bound its time
                                                   and memory (4,000,000; torch.save uses
                                                   about 30 per tensor)
max_metadata_bytes     TORCHGRAFT_MAX_METADATA_    a pickle, a safetensors header or a shard
                       BYTES                       index (32 MiB)
max_inflation          TORCHGRAFT_MAX_INFLATION    bytes a file may claim (tensor views,
                                                   arrays, zip entries) per byte of file (4)
inflation_allowance    TORCHGRAFT_INFLATION_       claimed bytes allowed on top, whatever the
                       ALLOWANCE                   file's size (256 MiB)
=====================  ==========================  =============================================
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import CheckpointError
from ..wording import in_cli

__all__ = ["ENV_PREFIX", "ReaderLimits", "limit_error", "resolve_limits"]

ENV_PREFIX = "TORCHGRAFT_"
_MIB = 1 << 20


@dataclass(frozen=True)
class ReaderLimits:
    """Bounds on what one checkpoint read may cost (see the module docstring's table).

    Attributes:
        max_tensors: tensors in one read (a sharded folder: all shards together).
        max_depth: nesting depth of containers (tuples, lists, dicts, objects) in a pickle.
        max_pickle_ops: instructions of one pickle that make or remember an object (all but
            a few: calls included), which bound the time and memory unpickling takes.
        max_metadata_bytes: bytes of a pickle, a safetensors header or a shard index.
        max_inflation: bytes a file may claim (tensor views, bytearrays, zip entries once
            inflated) per byte of the file itself.
        inflation_allowance: claimed bytes allowed on top of that, whatever the file's size.

    Example:
        >>> ReaderLimits().max_tensors
        100000
        >>> ReaderLimits(max_tensors=500_000).budget(1000)  # claimed bytes allowed
        268439456
    """

    max_tensors: int = 100_000
    max_depth: int = 100
    max_pickle_ops: int = 4_000_000
    max_metadata_bytes: int = 32 * _MIB
    max_inflation: float = 4.0
    inflation_allowance: int = 256 * _MIB

    def __post_init__(self) -> None:
        # NaN would pass every comparison (nan > limit is False) and infinity would make the
        # budget's int() fail: each reads as "no limit" or as a damaged file, never as this.
        for name, value in dataclasses.asdict(self).items():
            if not _finite_non_negative(value):
                raise CheckpointError(
                    f"reader limit {name} must be a finite non-negative number, got {value!r}; "
                    f"pass a number such as {getattr(ReaderLimits, name)!r} (the default)"
                )

    def budget(self, file_size: int) -> int:
        """Bytes a file of ``file_size`` bytes may claim beyond its own storages."""
        # min(): a huge max_inflation times the size may overflow a float to infinity.
        return int(min(self.max_inflation * file_size, _NO_LIMIT)) + self.inflation_allowance

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReaderLimits:
        """The defaults, with any ``TORCHGRAFT_<LIMIT>`` environment variable applied.

        Raises:
            CheckpointError: a variable that is not a non-negative number.
        """
        environ = os.environ if environ is None else environ
        values = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(env_var(field.name))
            if raw is None:
                continue
            kind = float if field.type in (float, "float") else int
            try:
                values[field.name] = value = kind(raw.replace("_", ""))
            except ValueError:
                value = -1
            if not _finite_non_negative(value):
                raise CheckpointError(
                    f"{env_var(field.name)}={raw!a} is not a finite non-negative "
                    f"{'number' if kind is float else 'whole number'}; unset it, or set it to "
                    f"a number such as {field.default!r} (the default)"
                )
        return cls(**values)


#: Claimed bytes beyond any file: a budget this large (4 EiB) bounds nothing.
_NO_LIMIT = float(1 << 62)


def _finite_non_negative(value: object) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return value >= 0 and (isinstance(value, int) or math.isfinite(value))


def env_var(limit: str) -> str:
    """The environment variable that sets ``limit`` (``max_tensors`` -> ``TORCHGRAFT_MAX_TENSORS``)."""
    return ENV_PREFIX + limit.upper()


def resolve_limits(limits: ReaderLimits | None) -> ReaderLimits:
    """``limits`` as given, or the defaults with the environment applied."""
    if limits is None:
        return ReaderLimits.from_env()
    if not isinstance(limits, ReaderLimits):
        raise CheckpointError(f"limits must be a ReaderLimits, got {type(limits).__name__}")
    return limits


def limit_error(origin: str, limit: str, found: str, limits: ReaderLimits) -> CheckpointError:
    """The refusal of a file over ``limit``: what was found, the limit, and how to raise it.

    Args:
        origin: the file, as the message should name it.
        limit: a :class:`ReaderLimits` field name.
        found: what the file asks for, in words (``"120,000 tensors"``).
        limits: the limits in force (their value is quoted).
    """
    value = getattr(limits, limit)
    shown = f"{value:,}" if isinstance(value, int) else f"{value:g}"
    variable = env_var(limit)
    if in_cli():
        how = f"set {variable} to a higher value"
    else:
        how = f"pass limits=ReaderLimits({limit}=...) or set {variable}"
    return CheckpointError(
        f"{origin}: refused: {found}, over the reader's limit {limit}={shown} (a hostile or "
        f"damaged file can ask for any amount). If you trust the file, {how}"
    )
