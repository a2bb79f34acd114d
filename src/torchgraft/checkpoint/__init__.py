"""Every file torchgraft reads, through one reader with its limits — knows files, never models.

- :mod:`.read` — :func:`read_checkpoint`: any checkpoint (torch zip or legacy, Lightning,
  safetensors, Hugging Face folders, in-memory state_dicts) into one :class:`Checkpoint`;
  :func:`~.read.read_torch_data` for torch files of plain data (a resume state);
- :mod:`.containers` — the :class:`Checkpoint` type, containers unwrapped, extras set aside;
- :mod:`.limits` — :class:`ReaderLimits`, what a file may ask of the reader;
- :mod:`.torch_files`, :mod:`.zip_layout`, :mod:`.safetensors_file` — the container formats,
  checked before anything is read; :mod:`.pickles` with the scanner in :mod:`.pickle_scan`,
  :mod:`.allowed_globals` and :mod:`.untrusted` — torch pickles read without running code;
- :mod:`.regular_files` and :mod:`.documents` — every other file (configs, run records,
  plans, sidecars): regular files only, bounded size, nesting and alias expansion;
- :mod:`.write` — grafted weights written with their sidecar; sha256 of a file.

Importing this package imports nothing else (the CLI reads documents without torch); the
public names load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "Checkpoint": ".containers",
    "ReaderLimits": ".limits",
    "read_checkpoint": ".read",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .containers import Checkpoint
    from .limits import ReaderLimits
    from .read import read_checkpoint

__all__ = ["Checkpoint", "ReaderLimits", "read_checkpoint"]
