"""``torchgraft.graft`` & co.: the grafting API, with model specs accepted wherever a source
or a source architecture is.

This is where names meet grafting: a source spec (``torchvision:resnet50``,
``torchvision:resnet50@IMAGENET1K_V1``, ``timm:resnet50.a1_in1k``) becomes the weights its
library downloads, and a source-model spec becomes the architecture, built here; then the
call goes to :mod:`torchgraft.grafting`, which knows only files, state_dicts and modules.

Options are checked here, at the public boundary, before anything is read: ``min_coverage``
outside 0..1 is refused (not compared against a coverage it can never reach), and ``rules``
without ``strategy`` means ``strategy="rules"`` while ``rules`` with another strategy is
refused (it would be ignored).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..checkpoint.read import Checkpoint
from ..errors import GraftError, SpecError
from ..grafting import api
from ..grafting import verify as verification
from ..grafting.graft_plan import GraftPlan, GraftReport
from ..grafting.source import Source, SourceWeights, looks_like_spec, read_options, read_source
from ..grafting.verify import Verification
from ..wording import option
from . import build_model, identified_architecture

__all__ = [
    "graft",
    "identified_architecture",
    "plan_graft",
    "resolve_source",
    "resolve_source_model",
    "verify_graft",
]


def resolve_source(source: Source | SourceWeights, **options: Any) -> SourceWeights:
    """Any accepted source, model specs with weights included, read once.

    ``options`` are the reader's (``ema``, ``allow_globals``, ``trust``).

    Raises:
        SpecError: an unknown spec or weights name; CheckpointError: an unreadable file.
    """
    if isinstance(source, str) and looks_like_spec(source) and not _exists(source):
        spec, _, weights = source.partition("@")
        built = build_model(spec, weights=weights or "DEFAULT")
        if built.source is None:
            raise SpecError(f"model spec '{source}' carries no weights to graft")
        checkpoint = Checkpoint(dict(built.source), "model-spec", built.source_name or source)
        return SourceWeights(checkpoint, built.spec.classes, tuple(built.source))
    return read_source(source, **options)


def resolve_source_model(source_model: str | nn.Module | None) -> nn.Module | None:
    """A source architecture: a module as it is, a model spec built without weights."""
    if source_model is None or isinstance(source_model, nn.Module):
        return source_model
    return build_model(source_model).model


def plan_graft(
    model: nn.Module, source: Any, *, source_model: str | nn.Module | None = None, **options: Any
) -> GraftPlan:
    """:func:`torchgraft.grafting.plan_graft`, with model specs accepted for ``source`` and
    ``source_model``.

    Example:
        >>> plan = tg.plan_graft(model, "colleague.ckpt", strategy="auto")
        >>> print(plan)
    """
    check_graft_options(options)
    weights = resolve_source(source, **read_options(options))
    options.setdefault("identify", identified_architecture)
    return api.plan_graft(
        model, weights, source_model=resolve_source_model(source_model), **options
    )


def graft(
    model: nn.Module, source: Any, *, source_model: str | nn.Module | None = None, **options: Any
) -> GraftReport:
    """:func:`torchgraft.grafting.graft`, with model specs accepted for ``source`` and
    ``source_model``.

    Example:
        >>> report = tg.graft(model, "colleague.ckpt", strategy="auto")
        >>> report.coverage, report.missing
    """
    check_graft_options(options)
    weights = resolve_source(source, **read_options(options))
    if source_model is not None:
        options["source_model"] = resolve_source_model(source_model)
    options.setdefault("identify", identified_architecture)
    return api.graft(model, weights, **options)


def verify_graft(
    model: nn.Module, source_model: str | nn.Module, source_weights: Any, **options: Any
) -> Verification:
    """:func:`torchgraft.grafting.verify_graft`, with model specs accepted for the source
    architecture and the source weights.

    Example:
        >>> tg.verify_graft(model, "timm:convnext_tiny", "colleague.ckpt").ok
        True
    """
    options.setdefault("source_name", source_model if isinstance(source_model, str) else None)
    return verification.verify_graft(
        model,
        resolve_source_model(source_model),
        resolve_source(source_weights),
        **options,
    )


def check_graft_options(options: dict[str, Any]) -> None:
    """Refuse options that make no sense or would be ignored; ``rules`` alone sets
    ``strategy="rules"`` in ``options``.

    Raises:
        GraftError: ``min_coverage`` is not a fraction from 0 to 1, or ``rules`` were given
            with a strategy that does not use them.
    """
    if "min_coverage" in options:
        api.check_min_coverage(options["min_coverage"])
    if options.get("rules") is not None:
        strategy = options.setdefault("strategy", "rules")
        if strategy != "rules":
            raise GraftError(
                f"{option('rules')} are used only by {option('strategy', 'rules')}, and "
                f"{option('strategy', strategy)} would ignore them; drop {option('strategy')} "
                f"(rules alone mean {option('strategy', 'rules')}) or drop {option('rules')}"
            )


def _exists(text: str) -> bool:
    from pathlib import Path

    return Path(text).exists()
