"""The model zoo: ``torchvision:NAME``, ``timm:NAME`` and ``package.module:callable``.

:func:`create_model` is the one-call API; :func:`build_model` is the first stage of the
``train`` recipe (architecture + spec + source weights, nothing grafted yet).

The library adapters are named in :data:`ADAPTERS` and imported on first use: importing
this package (``torchgraft inspect``, ``report`` and ``predict`` do) costs neither timm nor
torchvision, which take seconds to import; a command pays for them only when it builds or
lists one of their models.
"""

from __future__ import annotations

import importlib
import numbers
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from ..errors import CheckpointError, HeadError, SpecError
from ..resources import is_package_uri, resolve_package_file
from ..wording import option
from ._base import BuiltModel, ZooEntry, did_you_mean

if TYPE_CHECKING:
    from torch import nn

    from ..grafting.source import SourceWeights

__all__ = [
    "ADAPTERS",
    "BuiltModel",
    "ZooEntry",
    "adapter",
    "build_model",
    "create_model",
    "identified_architecture",
    "is_weights_file",
    "list_models",
    "parse_spec",
]

#: Library prefix -> the adapter module that builds and lists its models (``build``,
#: ``entries``, ``names``). Explicit and small, no registration by import side effect; a
#: module is imported on first use only (:func:`adapter`).
ADAPTERS: dict[str, str] = {
    "torchvision": f"{__name__}.torchvision",
    "timm": f"{__name__}.timm",
}
LOCAL = "module"


def adapter(library: str) -> ModuleType:
    """The adapter module of ``library`` (a key of :data:`ADAPTERS`), imported now if it was
    not yet: this is where timm or torchvision is first imported.

    Raises:
        KeyError: ``library`` has no adapter.
    """
    return importlib.import_module(ADAPTERS[library])


def parse_spec(spec: str) -> tuple[str, str]:
    """Split a model spec into ``(library, name)``.

    ``torchvision:resnet50`` -> ``("torchvision", "resnet50")``; ``my.pkg:build`` ->
    ``("module", "my.pkg:build")``.

    Raises:
        SpecError: no ``library:`` prefix; the message suggests the libraries that have the name.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise SpecError(f"a model spec is a string like 'torchvision:resnet50', got {spec!r}")
    library, sep, name = spec.strip().partition(":")
    if not sep:
        found = [f"'{prefix}:{spec}'" for prefix in ADAPTERS if spec in adapter(prefix).names()]
        hint = (
            f"; did you mean {' or '.join(found)}?"
            if found
            else ("; write torchvision:NAME, timm:NAME or package.module:callable")
        )
        raise SpecError(f"model spec '{spec}' names no library{hint}")
    if library in ADAPTERS:
        return library, name
    if "." in library or library.isidentifier():
        if library.isidentifier() and not _importable(library):
            raise SpecError(
                f"unknown library '{library}' in '{spec}'"
                + (did_you_mean(library, ADAPTERS) or f"; known: {', '.join(ADAPTERS)}")
            )
        return LOCAL, spec
    raise SpecError(f"model spec '{spec}' is not library:name or package.module:callable")


def build_model(
    spec: str,
    *,
    num_classes: int | None = None,
    weights: Any = None,
    in_chans: int | None = None,
    read_options: Mapping[str, Any] | None = None,
    **builder_kwargs: Any,
) -> BuiltModel:
    """The architecture, its spec and its source weights, before any graft.

    With named weights the model keeps its pretrained head and stem (the caller changes them
    and grafts); without weights, ``num_classes``/``in_chans`` go to the builder when it takes
    them. ``read_options`` (``ema``, ``allow_globals``, ``trust``) apply to a weights file.
    """
    from ..model.spec import attach_spec

    library, name = parse_spec(spec)
    # Checked here, not by the builder: torch's "negative dimension" would blame the head.
    _check_count("num_classes", num_classes, HeadError, "classes of the new head")
    _check_count("in_chans", in_chans, SpecError, "input channels")
    if is_package_uri(weights):
        weights = resolve_package_file(weights)
    named = None if is_weights_file(weights) else weights
    if library == LOCAL:
        from . import local as local_zoo

        built = local_zoo.build(name, named, num_classes, in_chans, **builder_kwargs)
    else:
        built = adapter(library).build(name, named, num_classes, in_chans, **builder_kwargs)
    if named is None and weights is not None:
        from ..checkpoint.read import read_checkpoint

        checkpoint = read_checkpoint(weights, **dict(read_options or {}))
        built.source, built.source_name = checkpoint.tensors, checkpoint.origin
    attach_spec(built.model, built.spec)
    return built


def create_model(
    spec: str,
    num_classes: int | None = None,
    weights: Any = None,
    in_chans: int | None = None,
    *,
    classes: Sequence[str] | None = None,
    keep_classes: bool | Sequence[str] = False,
    **builder_kwargs: Any,
) -> nn.Module:
    """Build a model from the zoo, with weights, head and stem as asked.

    Args:
        spec: ``torchvision:NAME``, ``timm:NAME[.tag]`` or ``package.module:callable``.
        num_classes: outputs of the head (default: the weights' or the builder's own).
        weights: ``None``; ``"DEFAULT"``/``True``; a torchvision enum name (``"IMAGENET1K_V2"``);
            ``package://PACKAGE/PATH`` (a file inside an installed package);
            a timm pretrained tag (``"a1_in1k"``); or a checkpoint file path.
        in_chans: input channels (the pretrained first conv is adapted by the graft).
        classes: names of the outputs (sets ``num_classes``; recorded in the spec).
        keep_classes: keep the pretrained head rows of these (or, with True, of all shared) classes.
        builder_kwargs: passed to the library's builder (e.g. ``drop_path_rate`` for timm).

    Returns:
        The model, with its :class:`~torchgraft.ModelSpec` as ``model.torchgraft_spec`` and,
        when weights were loaded, the graft report as ``model.torchgraft_report``.

    Raises:
        SpecError: unknown model or weights (with close matches); GraftError: weights that
            do not fit.

    Example:
        >>> model = tg.create_model("torchvision:resnet50", num_classes=37, weights="DEFAULT")
        >>> model.torchgraft_spec.head_path
        'fc'
    """
    from ..grafting.api import graft
    from ..model.heads import replace_head, rows_to_keep
    from ..model.spec import attach_spec
    from ..model.stem import replace_input_channels

    if classes is not None and num_classes is None:
        num_classes = len(classes)
    built = build_model(
        spec, num_classes=num_classes, weights=weights, in_chans=in_chans, **builder_kwargs
    )
    model = built.model
    if in_chans is not None and in_chans != built.spec.in_chans:
        replace_input_channels(model, in_chans)
    current = model.torchgraft_spec
    if keep_classes:
        # Validate now (names, known categories); the graft copies the rows, so the report
        # shows them as adapted.
        rows_to_keep(current, classes, keep_classes)
    if (num_classes is not None and num_classes != current.num_classes) or keep_classes:
        replace_head(model, num_classes, classes=classes)
    elif classes is not None:
        attach_spec(model, current.with_head(current.num_classes, tuple(classes)))
    if built.source is not None:
        report = graft(
            model,
            built.source,
            source_name=built.source_name,
            source_classes=current.classes if keep_classes else None,
            keep_classes=keep_classes if not isinstance(keep_classes, bool) else True,
            identify=identified_architecture,
        )
        object.__setattr__(model, "torchgraft_report", report)
    return model


def identified_architecture(weights: SourceWeights) -> tuple[nn.Module, str] | None:
    """The one architecture whose state_dict has exactly the source's names and shapes
    (``torchgraft.zoo.identify``), built without weights, and a note saying so; None when
    no single builder fits. Several builders with equal tables are one answer only when,
    holding these weights, they compute the same (:mod:`.equal_tables`); never guessed."""
    from ..model.build_record import check_recorded_builder
    from .equal_tables import settle_equal_tables
    from .identify import identify  # the index is loaded on first use only

    tensors = weights.checkpoint.tensors
    table = {k: tuple(v.shape) for k, v in tensors.items()}
    try:
        found = settle_equal_tables(identify(table, on_build=_say_building), tensors, _bare)
    except Exception:  # an index that cannot be built must not break a graft
        return None
    if found.exact is None:
        return None
    try:
        # The index is a file in the cache: the names it holds never select code either.
        check_recorded_builder(found.exact, "the architecture index")
    except CheckpointError:
        return None
    classes = found.num_classes if found.head_differs else None
    model = build_model(found.exact, num_classes=classes).model
    return model, (
        f"source architecture identified as {found.summary()}: its registration order and "
        "a side-by-side run settle what order alone suggested"
    )


def _bare(spec: str, num_classes: int | None) -> nn.Module:
    """``spec`` built without weights (for :mod:`.equal_tables`)."""
    return build_model(spec, num_classes=num_classes).model


def _say_building(library: str, count: int) -> None:
    """A first index build can take minutes: say so on stderr instead of going silent."""
    if count >= 50:
        print(
            f"torchgraft: indexing {count} {library} architectures to identify the source "
            "(once per library version; a few minutes for timm)...",
            file=sys.stderr,
            flush=True,
        )


def list_models(filter: str | None = None, library: str | None = None) -> list[ZooEntry]:
    """Zoo entries whose spec contains ``filter`` (case-insensitive)."""
    if library is not None and library not in ADAPTERS:
        raise SpecError(f"unknown library '{library}'; known: {', '.join(ADAPTERS)}")
    chosen = [library] if library else list(ADAPTERS)
    needle = (filter or "").lower()
    return [e for lib in chosen for e in adapter(lib).entries() if needle in e.spec.lower()]


#: File suffixes that mark a ``weights=`` string as a path even before it exists.
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".pkl", ".tar")


def _check_count(name: str, value: Any, error: type[Exception], meaning: str) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise error(
            f"{option(name)} is the number of {meaning}: a whole number >= 1, got {value!r}"
        )


def is_weights_file(weights: Any) -> bool:
    """True when a ``weights=`` value names a file (a path, or a string that looks like one)
    rather than named weights (``"DEFAULT"``, ``"IMAGENET1K_V2"``, a timm tag)."""
    if isinstance(weights, os.PathLike):
        return True
    if not isinstance(weights, str):
        return False
    return (
        "/" in weights
        or os.sep in weights
        or weights.lower().endswith(CHECKPOINT_SUFFIXES)
        or Path(weights).exists()
    )


def _importable(name: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
