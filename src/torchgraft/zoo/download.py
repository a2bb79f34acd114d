"""Named weights come from the libraries' caches; without a network, say so at once.

torchvision and timm fetch named weights themselves (we keep their download and cache code:
the per-builder details they apply with weights stay theirs). What they do without a
network is not a message a user can act on: torchvision raises a bare ``URLError``; timm
through ``huggingface_hub`` retries for about a minute, printing a line per retry, then
raises ``LocalEntryNotFoundError``. Both used to surface as "internal error".

Here the load runs inside a guard that turns "cannot be downloaded" into one
:class:`WeightsUnavailableError` (exit status 2) saying which weights, why, where the
library looks for them (the file or folder to fill), and that a checkpoint file can be
passed instead:

* **a URL** (torchvision, and timm weights without a Hub id): the library is called; an
  ``OSError`` (``URLError``, ``HTTPError``, a refused connection, a timeout) while the
  file is not in ``$TORCH_HOME/hub/checkpoints`` becomes the error.
* **the Hugging Face Hub** (timm): first a load in offline mode (``huggingface_hub``'s own
  switch, set for the call only), which answers from the cache without touching the
  network, or fails at once when the file is not there. Only then is the network tried: one
  TCP connection to the Hub's host with a short timeout (skipped when a proxy is set, which
  a direct connection cannot judge); unreachable means the error now, instead of the retry
  loop. ``HF_HUB_OFFLINE=1`` set by the user is respected: the cache or the error.
"""

from __future__ import annotations

import os
import socket
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from ..errors import SpecError
from ..text import printable

__all__ = [
    "WeightsUnavailableError",
    "from_hf_hub",
    "from_url",
    "hf_cache_folder",
    "torch_hub_file",
]

T = TypeVar("T")

#: Seconds the Hub's host has to accept a TCP connection before it counts as unreachable.
CONNECT_TIMEOUT = 5.0


class WeightsUnavailableError(SpecError, OSError):
    """Named weights that are not in the cache and cannot be downloaded now.

    A :class:`SpecError` (exit status 2: the user can fix it by filling the cache or passing a
    file) and an ``OSError``, as the library's own download failure was: code that caught
    ``OSError`` around ``create_model`` still does.
    """


def torch_hub_file(url: str) -> Path:
    """Where ``torch.hub`` (torchvision, timm URLs) keeps the file downloaded from ``url``."""
    import torch.hub

    name = os.path.basename(urllib.parse.urlparse(url).path)
    return Path(torch.hub.get_dir()) / "checkpoints" / name


def hf_cache_folder(repo_id: str) -> Path:
    """Where ``huggingface_hub`` keeps the files of model repository ``repo_id``."""
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--"))


def from_url(label: str, url: str, load: Callable[[], T]) -> T:
    """``load()``, which fetches ``url`` through ``torch.hub`` unless it is cached.

    Raises:
        WeightsUnavailableError: the file is not cached and the download failed.
    """
    cached = torch_hub_file(url)
    try:
        return load()
    except OSError as exc:
        if cached.exists() or isinstance(exc, WeightsUnavailableError):
            raise  # not a download problem: reading the cached file failed
        raise WeightsUnavailableError(
            _unavailable(
                label,
                f"{type(exc).__name__}: {exc}",
                f"at {cached} (torch hub's cache; TORCH_HOME moves it): download {url} "
                "there on a machine with a network",
            )
        ) from exc


def from_hf_hub(label: str, repo_id: str, load: Callable[[], T]) -> T:
    """``load()``, which reads ``repo_id``'s weights through ``huggingface_hub``: from the
    cache without any network access, else downloaded when the Hub can be reached.

    Raises:
        WeightsUnavailableError: not in the cache, and offline mode is on or the Hub
            cannot be reached or the download failed.
    """
    from huggingface_hub import constants
    from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

    where = (
        f"under {hf_cache_folder(repo_id)} (the Hugging Face cache; HF_HUB_CACHE or HF_HOME "
        f"move it): fill it on a machine with a network (`hf download {repo_id}`) and copy "
        "the folder over"
    )
    user_offline = constants.HF_HUB_OFFLINE
    try:
        with _hf_offline():
            return load()
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as exc:  # not (all) in the cache
        if user_offline:
            raise WeightsUnavailableError(
                _unavailable(label, "HF_HUB_OFFLINE is set, so nothing is downloaded", where)
            ) from exc
    problem = unreachable(constants.ENDPOINT)
    if problem is not None:
        raise WeightsUnavailableError(_unavailable(label, problem, where))
    try:
        return load()
    except OSError as exc:  # LocalEntryNotFoundError, ConnectionError, a timeout …
        raise WeightsUnavailableError(
            _unavailable(label, f"{type(exc).__name__}: {exc}", where)
        ) from exc


def unreachable(url: str) -> str | None:
    """Why ``url``'s host cannot be reached now, or None (reachable, or behind a proxy).

    One TCP connection with :data:`CONNECT_TIMEOUT`. Not remembered: it runs only when the
    weights are not cached, and a notebook whose network comes back must be able to retry."""
    parts = urllib.parse.urlparse(url)
    if parts.scheme in urllib.request.getproxies():
        return None  # a direct connection says nothing about the proxy's
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return f"{parts.hostname} cannot be reached: {reason}"
    return None


@contextmanager
def _hf_offline() -> Iterator[None]:
    """``huggingface_hub`` in offline mode for the block: the cache only, no request."""
    from huggingface_hub import constants

    previous = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read at each call (constants.is_offline_mode())
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = previous


def _unavailable(label: str, why: str, where: str) -> str:
    return (
        f"the weights {label} are not in the cache and cannot be downloaded "
        f"({printable(why)}). They are looked for {printable(where)}; or pass a checkpoint "
        "file instead of the weights name (a .safetensors or .pth path works wherever a "
        "weights name does)"
    )
