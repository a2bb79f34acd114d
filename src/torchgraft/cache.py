"""Where torchgraft keeps files it can always rebuild (indexes, never weights or runs).

One folder, chosen in this order:

1. ``$TORCHGRAFT_CACHE_DIR`` — an explicit override (tests point it at a temporary folder);
2. ``$XDG_CACHE_HOME/torchgraft`` — the freedesktop convention;
3. ``~/.cache/torchgraft``.

Pretrained weights are not kept here: torchvision and timm download them into their own
caches (``$TORCH_HOME``, the Hugging Face hub cache), and torchgraft leaves those alone.
Everything under this folder is derived data: deleting it loses nothing but time.

This module imports only the standard library (like :mod:`torchgraft.atomic`).
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["CACHE_ENV", "cache_dir"]

#: Environment variable that overrides the cache folder.
CACHE_ENV = "TORCHGRAFT_CACHE_DIR"


def cache_dir(*parts: str, create: bool = True) -> Path:
    """The cache folder (or a subfolder of it), created on demand.

    Args:
        parts: subfolder names, joined below the cache folder (``cache_dir("arch-index")``).
        create: create the folder (and its parents) when missing.

    Returns:
        An absolute path; it exists when ``create`` is true.

    Raises:
        OSError: the folder cannot be created (read-only home, a file in the way).

    Example:
        >>> cache_dir("arch-index")  # doctest: +SKIP
        PosixPath('/home/me/.cache/torchgraft/arch-index')
    """
    override = os.environ.get(CACHE_ENV)
    if override:
        root = Path(override).expanduser()
    else:
        xdg = os.environ.get("XDG_CACHE_HOME")
        base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
        root = base / "torchgraft"
    folder = root.joinpath(*parts).absolute()
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    return folder
