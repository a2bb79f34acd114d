"""Parameter-efficient fine-tuning: LoRA and DoRA adapters (Hugging Face peft's layers).

- :mod:`.settings` — :class:`AdapterSettings`: method, rank, alpha, dropout, checked once
  for a call and for a record read from a file;
- :mod:`.selection` — which modules carry an adapter: ``"auto"`` from the anatomy, or globs;
- :mod:`.peft_layers` — the boundary with peft: layers injected in place and taken out;
- :mod:`.inject` — :func:`add_adapters`: targets, injection, what trains, the record;
- :mod:`.summary` — :class:`AdapterSummary`, what was adapted and why;
- :mod:`.outputs` — a model's outputs on a probe batch and their relative difference;
- :mod:`.merge` — :func:`merge_adapters`: merged, checked, undone when the check fails;
- :mod:`.state` — :func:`adapter_state_dict`, :func:`adapter_config`, :func:`load_adapters`;
- :mod:`.files` — :func:`save_adapters` / :func:`read_adapters`: safetensors + sidecar.

peft is imported only when a function that needs it runs; importing this package imports
nothing else (the public names load on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "AdapterSettings": ".settings",
    "AdapterSummary": ".summary",
    "MergeReport": ".merge",
    "add_adapters": ".inject",
    "adapter_config": ".state",
    "adapter_state_dict": ".state",
    "load_adapters": ".state",
    "merge_adapters": ".merge",
    "read_adapters": ".files",
    "save_adapters": ".files",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .files import read_adapters, save_adapters
    from .inject import add_adapters
    from .merge import MergeReport, merge_adapters
    from .settings import AdapterSettings
    from .state import adapter_config, adapter_state_dict, load_adapters
    from .summary import AdapterSummary

__all__ = [
    "AdapterSettings",
    "AdapterSummary",
    "MergeReport",
    "adapter_config",
    "adapter_state_dict",
    "add_adapters",
    "load_adapters",
    "merge_adapters",
    "read_adapters",
    "save_adapters",
]
