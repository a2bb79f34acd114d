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
- :mod:`.files` — :func:`save_adapters` / :func:`read_adapters`: safetensors + sidecar;
- :mod:`.snapshot` — a run's result: merged plain weights (checked) and the adapters alone.

peft is imported only when a function that needs it runs; importing this package imports
nothing else (the public names load on first use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports

_EXPORTS = {
    "AdaptedSnapshot": ".snapshot",
    "AdapterSettings": ".settings",
    "AdapterSummary": ".summary",
    "MergeReport": ".merge",
    "add_adapters": ".inject",
    "adapter_config": ".state",
    "adapter_state_dict": ".state",
    "load_adapters": ".state",
    "merge_adapters": ".merge",
    "plain_names": ".state",
    "recreate_adapters": ".state",
    "read_adapters": ".files",
    "save_adapters": ".files",
    "adapted_snapshot": ".snapshot",
    "trainable_names": ".inject",
    "write_adapters": ".files",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

if TYPE_CHECKING:
    from .files import read_adapters, save_adapters, write_adapters
    from .inject import add_adapters, trainable_names
    from .merge import MergeReport, merge_adapters
    from .settings import AdapterSettings
    from .snapshot import AdaptedSnapshot, adapted_snapshot
    from .state import (
        adapter_config,
        adapter_state_dict,
        load_adapters,
        plain_names,
        recreate_adapters,
    )
    from .summary import AdapterSummary

__all__ = [
    "AdaptedSnapshot",
    "AdapterSettings",
    "AdapterSummary",
    "MergeReport",
    "adapted_snapshot",
    "adapter_config",
    "adapter_state_dict",
    "add_adapters",
    "load_adapters",
    "merge_adapters",
    "plain_names",
    "read_adapters",
    "recreate_adapters",
    "save_adapters",
    "trainable_names",
    "write_adapters",
]
