"""Which builders that share one state_dict table compute the same function — decided when the
package was built, for the library versions it ships tables for.

``torchgraft inspect`` names every builder whose table a checkpoint has; when there are
several (``torchvision:resnet50``, ``timm:resnet50``, ``timm:resnetaa50``,
``timm:resnetblur50``), :mod:`.equal_tables` runs them side by side holding the checkpoint's
tensors — seconds of building and running, after importing timm. A difference between such
builders is one of code (padding, BatchNorm epsilon, an anti-aliasing pool, an activation),
so it shows with any generic weights: the package runs every group once, on seeded random
weights with every parameter moved off its initial value (a zero-initialised branch hides
nothing) and BatchNorm statistics that describe something, and ships the verdicts.
``inspect`` reads them (in milliseconds, saying so); ``torchgraft graft`` and ``tg.graft``
still compare the builders with the file's own weights before choosing one.

The file (``zoo/tables/functions-timm-<version>-torchvision-<version>.json``) is read through
the bounded document reader and used only with the versions it names. Maintainers write it
with ``python -m torchgraft.zoo.ship`` (tables, then verdicts).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..checkpoint.documents import DocumentLimits, read_json
from ..errors import CheckpointError
from .catalogue import library_version
from .shipped_tables import FOLDER, public_version

__all__ = ["FORMAT", "compute", "verdict", "verdicts_path"]

FORMAT = 1
_LIMITS = DocumentLimits(max_bytes=1024 * 1024, max_depth=6)
#: Standard deviation of the noise added to every parameter, so that no branch stays at
#: its zero initialisation (a zero-initialised last BatchNorm hides a residual branch).
NOISE = 0.02
#: Groups of larger models are not run when the package is built (each builder runs at its
#: full input size: a billion-parameter ViT takes tens of GB); inspect compares them live.
MAX_PARAMETERS = 150_000_000

_CACHE: dict[Path, dict[frozenset[str], dict[str, Any]] | None] = {}


def verdicts_path(folder: Path | None = None) -> Path:
    """The file for the installed timm and torchvision versions (nothing is imported)."""
    timm, torchvision = (public_version(library_version(n)) for n in ("timm", "torchvision"))
    return (folder or FOLDER) / f"functions-timm-{timm}-torchvision-{torchvision}.json"


def verdict(specs: Sequence[str], folder: Path | None = None) -> dict[str, Any] | None:
    """``{"same_function", "difference", "comparison"}`` shipped for exactly these builders,
    or None (no file for these versions, a group not in it, or a file that is not one)."""
    path = verdicts_path(folder)
    if path not in _CACHE:
        _CACHE[path] = _read(path)
    known = _CACHE[path]
    return None if known is None else known.get(frozenset(specs))


def _read(path: Path) -> dict[frozenset[str], dict[str, Any]] | None:
    try:
        document = read_json(path, CheckpointError, _LIMITS)
    except (CheckpointError, OSError, ValueError):
        return None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        return None
    found: dict[frozenset[str], dict[str, Any]] = {}
    for group in document.get("groups", []):
        if not isinstance(group, dict):
            return None
        specs, same = group.get("specs"), group.get("same_function")
        difference, comparison = group.get("difference"), group.get("comparison", "")
        valid = (
            isinstance(specs, list)
            and len(specs) >= 2
            and all(isinstance(s, str) for s in specs)
            and (same is None or isinstance(same, bool))
            and (difference is None or isinstance(difference, (int, float)))
            and isinstance(comparison, str)
        )
        if not valid:
            return None
        found[frozenset(specs)] = {
            "same_function": same,
            "difference": None if difference is None else float(difference),
            "comparison": comparison,
        }
    return found


def compute(on_group: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Every equal-table group of the installed zoo, run once (minutes): the verdicts."""
    import torch

    from . import build_model
    from .arch_index import load_index
    from .equal_tables import MAX_EQUAL, settle_equal_tables
    from .identification import Identification
    from .meta_build import arch_table

    groups: dict[str, list[str]] = defaultdict(list)
    for library in ("torchvision", "timm"):
        for entry in load_index(library).entries:
            if not entry["variant"]:
                groups[entry["weights"]].append(f"{library}:{entry['name']}")
    results = []
    for specs in (g for g in groups.values() if 2 <= len(g) <= MAX_EQUAL):
        library, _, name = specs[0].partition(":")
        table, _ = arch_table(library, name)  # on meta: the size before building it
        if sum(math.prod(shape) for shape in table.values()) > MAX_PARAMETERS:
            if on_group is not None:
                on_group(f"{', '.join(specs)}: over {MAX_PARAMETERS:,} parameters, not run")
            continue
        torch.manual_seed(0)
        try:
            tensors = _generic_weights(build_model(specs[0]).model)
        except Exception as exc:  # a builder that cannot run here: nothing shipped for it
            if on_group is not None:
                on_group(f"{', '.join(specs)}: not built ({type(exc).__name__})")
            continue
        found = Identification(
            exact_all=tuple(specs),
            candidates=(),
            head="same",
            num_classes=None,
            same_shapes=(),
            keys=len(tensors),
            key_note="",
            libraries=("torchvision", "timm"),
            unindexed=0,
        )
        settled = settle_equal_tables(
            found, tensors, lambda spec, classes: build_model(spec, num_classes=classes).model
        )
        # Not compared (input sizes differ, a weight that does not load as it is) is a
        # verdict too: inspect says so at once instead of building them to find out.
        difference = settled.difference
        results.append(
            {
                "specs": list(specs),
                "same_function": settled.same_function,
                "difference": None if difference is None or math.isnan(difference) else difference,
                "comparison": settled.comparison,
            }
        )
        if on_group is not None:
            on_group(f"{', '.join(specs)}: {settled.comparison}")
    return results


def _generic_weights(model) -> dict[str, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * NOISE)
        for module in model.modules():
            if (
                isinstance(module, torch.nn.modules.batchnorm._BatchNorm)
                and module.track_running_stats
            ):
                module.running_var.uniform_(0.5, 1.5, generator=generator)
                module.running_mean.normal_(0, 0.1, generator=generator)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}
