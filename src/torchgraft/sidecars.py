"""How the JSON record written beside a file is named: one rule for every file torchgraft
writes with a sidecar.

The sidecar of ``FILE`` is ``FILE + ".json"``: ``out.safetensors`` → ``out.safetensors.json``
(``torchgraft graft -o``), ``model.onnx`` → ``model.onnx.json`` (``torchgraft export``). The
whole name is kept, so two files that differ only in their suffix (``m.onnx`` and ``m.pt2``)
never share a sidecar, and a listing shows each file next to its record.

Graft outputs written before this rule had their sidecar at the file's name with the suffix
replaced (``out.safetensors`` → ``out.json``); :func:`legacy_sidecar_path` names it for the
readers that still accept one.

The run directory's ``model.json`` beside ``model.safetensors`` is not a sidecar in this
sense: it is one of the run's own files, its name part of the run directory's contract.

No torch here: ``torchgraft graft`` checks its output paths before torch is imported.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["SUFFIX", "legacy_sidecar_path", "sidecar_path"]

#: What a sidecar's name adds to its file's name.
SUFFIX = ".json"


def sidecar_path(path: str | os.PathLike) -> Path:
    """The sidecar of ``path``: the same folder and name, plus ``.json``.

    Example:
        >>> sidecar_path("out/grafted.safetensors")
        PosixPath('out/grafted.safetensors.json')
    """
    path = Path(path)
    return path.with_name(path.name + SUFFIX)


def legacy_sidecar_path(path: str | os.PathLike) -> Path:
    """Where a graft output's sidecar was written before :func:`sidecar_path`'s rule: the
    suffix replaced by ``.json`` (``out.safetensors`` → ``out.json``). For readers only."""
    return Path(path).with_suffix(SUFFIX)
