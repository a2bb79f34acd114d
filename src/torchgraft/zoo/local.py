"""``package.module:callable`` — a user's own builder function or class.

The callable is imported and called; ``num_classes`` and ``in_chans`` are passed only when
its signature accepts them (``create_model`` changes head and stem otherwise). Weights for
such a model come from a file, grafted like any other source.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from torch import nn

from ..anatomy import infer_spec
from ..errors import SpecError
from ._base import BuiltModel, did_you_mean

__all__ = ["build"]


def build(
    target: str,
    weights: Any = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
    **kwargs: Any,
) -> BuiltModel:
    """Import and call ``package.module:callable``.

    Raises:
        SpecError: the module or callable cannot be found, the call fails, it does not return
            an ``nn.Module``, or named weights were asked for (only files are possible here).
    """
    if weights not in (None, False):
        raise SpecError(
            f"{target}: a local builder has no named weights '{weights}'; pass a checkpoint "
            "file path as weights instead"
        )
    builder = _resolve(target)
    accepted = _accepted_parameters(builder)
    options = dict(kwargs)
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is not None and (accepted is None or key in accepted):
            options[key] = value
    try:
        model = builder(**options)
    except TypeError as exc:
        raise SpecError(f"calling {target}({_show(options)}) failed: {exc}") from exc
    if not isinstance(model, nn.Module):
        raise SpecError(f"{target} returned a {type(model).__name__}, not an nn.Module")
    return BuiltModel(model, infer_spec(model, target))


def _resolve(target: str):
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise SpecError(f"'{target}' is not of the form package.module:callable")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SpecError(
            f"cannot import '{module_name}' for model spec '{target}': {exc}. Is the package "
            "installed, or its folder on PYTHONPATH?"
        ) from exc
    obj: Any = module
    for part in attribute.split("."):
        if not hasattr(obj, part):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise SpecError(
                f"'{module_name}' has no attribute '{attribute}'" + did_you_mean(part, public)
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise SpecError(f"'{target}' is a {type(obj).__name__}, not a callable")
    return obj


def _accepted_parameters(builder) -> set[str] | None:
    """Parameter names the builder takes; None when it takes ``**kwargs`` or is opaque."""
    try:
        parameters = inspect.signature(builder).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return None
    return {p.name for p in parameters}


def _show(options: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in options.items())
