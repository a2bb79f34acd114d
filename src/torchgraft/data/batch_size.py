"""How big a batch may be: never larger than the split, never more than memory can hold.

``--data.batch_size 100000`` on the 1,797 digits asked for batches of 100,000 images: the
loaders give one batch of the whole split anyway (:func:`~.loaders.batch_order`), but a
consumer that pads batches to the configured size (the feature cache does, for one traced
input shape) allocated 200,000 images and their activations — 22 GB before the kernel killed
the process. The rules:

* **Clamped to the split**: a batch larger than the split (this process's share of it) is
  the split; :func:`largest_batch` says how large a batch really is, and :func:`clamp_note`
  says so in one line. Nothing changes in what is trained: the loader gave that batch
  already.
* **Refused over memory, before allocating**: :func:`check_batch` estimates one step's
  memory — the uint8 batch, its augmented copy, the float32 normalised batch and its
  channels-last copy (:func:`input_bytes`), plus what the model keeps per image for the
  backward pass when the caller measured it — and raises a
  :class:`~torchgraft.errors.ConfigError` naming the option when it exceeds the memory this
  process may use (:func:`available_memory`: the smallest of the machine's memory, the
  address-space limit ``RLIMIT_AS`` and the cgroup's limit — never what is free at the
  moment, so the answer does not depend on the machine's load).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from ..errors import ConfigError

try:
    import resource
except ImportError:  # Windows: no address-space limit to read
    resource = None

__all__ = ["available_memory", "check_batch", "clamp_note", "input_bytes", "largest_batch"]

#: Share of the available memory one step may take: the rest is the model, the optimizer,
#: the data kept in memory, and the allocator's slack.
MEMORY_SHARE = 0.5


def largest_batch(requested: int, samples: int) -> int:
    """The largest batch a loader gives: ``requested``, or ``samples`` when fewer (at least 1)."""
    return max(1, min(int(requested), int(samples)))


def clamp_note(option_name: str, requested: int, samples: int, split: str) -> str | None:
    """``"data.batch_size 100,000 is more than the 1,438 train images: batches of 1,438"``,
    or None when the batch fits the split."""
    if requested <= samples:
        return None
    return (
        f"{option_name} {requested:,} is more than the {samples:,} {split} images: batches "
        f"of {max(1, samples):,}"
    )


def input_bytes(batch: int, input_size: Sequence[int], *, augment: bool) -> int:
    """Bytes of one input batch on its way in: uint8 images (and their augmented copy), the
    float32 normalised batch and its channels-last copy."""
    pixels = batch * math.prod(input_size)
    return pixels * ((2 if augment else 1) + 4 + 4)


def check_batch(
    batch: int,
    input_size: Sequence[int],
    *,
    key: str = "data.batch_size",
    augment: bool = False,
    bytes_per_image: int = 0,
    available: int | None = None,
) -> None:
    """Refuse a batch whose step would need more than :data:`MEMORY_SHARE` of the memory
    this process may use, before anything is allocated.

    Args:
        batch: images per batch (already clamped with :func:`largest_batch`).
        input_size: ``(C, H, W)``.
        key: the configuration key that set the batch (named in the error).
        augment: whether training augments (one more uint8 copy).
        bytes_per_image: what the model keeps per image for the backward pass (activations),
            when the caller measured it; 0 counts the input alone.
        available: bytes this process can still get; default :func:`available_memory`.

    Raises:
        ConfigError: naming the key, the estimate, the memory available and what to do.
    """
    available = available_memory() if available is None else available
    if available is None:
        return
    need = input_bytes(batch, input_size, augment=augment) + batch * bytes_per_image
    if need <= MEMORY_SHARE * available:
        return
    fits = max(1, int(MEMORY_SHARE * available // max(1, need // batch)))
    raise ConfigError(
        f"{key}: a batch of {batch:,} images of {'x'.join(map(str, input_size))} needs about "
        f"{need / 2**20:,.0f} MiB per step, more than half of the memory this process may "
        f"use ({available / 2**20:,.0f} MiB); set {key} to {fits} or less"
    )


def available_memory() -> int | None:
    """Bytes this process may use at most: the smallest of the machine's memory
    (``MemTotal``), the address-space limit (``RLIMIT_AS``) less what the process maps, and
    the cgroup's limit; None when none is known (not Linux).

    Limits, not what happens to be free this moment: whether a batch is refused must not
    depend on how busy the machine is (the same command, the same answer)."""
    known = [_meminfo_total(), _address_space_left(), _cgroup_limit()]
    known = [value for value in known if value is not None]
    return min(known) if known else None


def _meminfo_total() -> int | None:
    return _proc_field(Path("/proc/meminfo"), "MemTotal:")


def _address_space_left() -> int | None:
    if resource is None:
        return None
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    mapped = _proc_field(Path("/proc/self/status"), "VmSize:")
    return max(0, soft - mapped) if mapped is not None else soft


def _cgroup_limit() -> int | None:
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        return None if limit == "max" else int(limit)
    except (OSError, ValueError):
        return None


def _proc_field(path: Path, field: str) -> int | None:
    """A ``kB`` figure of a ``/proc`` file, in bytes."""
    try:
        for line in path.read_text().splitlines():
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None
