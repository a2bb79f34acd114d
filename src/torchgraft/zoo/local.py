"""``package.module:callable`` — a user's own builder function or class.

Literal arguments may follow: ``pkg.models:Net.from_name('lite0', dropout=0.1)``. Only Python
literals are accepted there (strings, numbers, tuples, lists, dicts, booleans, None); nothing
is evaluated. The callable is imported and called; ``num_classes`` and ``in_chans`` are passed only when
its signature accepts them (``create_model`` changes head and stem otherwise). Weights for
such a model come from a file, grafted like any other source.

The module and the callable are the user's code: whatever they raise while being imported
or called (a ``SyntaxError``, a ``KeyError`` in the builder) is reported as a
:class:`SpecError` naming the spec and the error, and saying that the error is in that code,
never as an internal error of torchgraft. The original exception is chained (``--debug``
shows its traceback).
"""

from __future__ import annotations

import ast
import importlib
import inspect
from typing import Any

from torch import nn

from ..errors import SpecError
from ..model.anatomy import infer_spec
from ..text import printable
from ..wording import in_cli, option
from ._base import BuiltModel, did_you_mean

__all__ = ["build", "resolve_builder"]


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
            f"{target}: a local builder has no named weights '{weights}'; give a checkpoint "
            f"file instead ({option('weights', 'PATH')})"
        )
    target, positional, literal_kwargs = _split_call(target)
    builder = _resolve(target)
    accepted = _accepted_parameters(builder)
    options = {**literal_kwargs, **kwargs}
    for key, value in (("num_classes", num_classes), ("in_chans", in_chans)):
        if value is not None and (accepted is None or key in accepted):
            options[key] = value
    try:
        model = builder(*positional, **options)
    except Exception as exc:  # the user's builder can raise anything
        if isinstance(exc, TypeError) and not _binds(builder, positional, options):
            # The arguments do not fit the signature: the spec is at fault, not the code.
            raise SpecError(
                f"calling {target}({_show(positional, options)}) failed: {exc}"
            ) from exc
        raise SpecError(
            f"model spec '{target}': calling {target}({_show(positional, options)}) raised "
            f"{_raised(exc)}. The error is in that code, not in torchgraft{_traceback_hint()}"
        ) from exc
    if not isinstance(model, nn.Module):
        raise SpecError(f"{target} returned a {type(model).__name__}, not an nn.Module")
    return BuiltModel(model, infer_spec(model, target))


def resolve_builder(target: str):
    """The callable ``package.module:callable(literal args)`` names (imported, not called).

    Raises:
        SpecError: the arguments are not literals, or the module or callable cannot be found.
    """
    return _resolve(_split_call(target)[0])


def _split_call(target: str) -> tuple[str, list[Any], dict[str, Any]]:
    """``"m:f(1, a='x')"`` -> ``("m:f", [1], {"a": "x"})``, accepting literals only."""
    if not target.endswith(")") or "(" not in target:
        return target, [], {}
    name, _, arguments = target.partition("(")
    try:
        call = ast.parse(f"f({arguments}", mode="eval").body
        positional = [ast.literal_eval(node) for node in call.args]
        keywords = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords if kw.arg}
    except (SyntaxError, ValueError) as exc:
        raise SpecError(
            f"arguments in model spec '{target}' must be Python literals: {exc}"
        ) from None
    return name, positional, keywords


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
    except Exception as exc:  # a SyntaxError, or anything its top level raises
        raise SpecError(
            f"model spec '{target}': importing '{module_name}' raised {_raised(exc)}. The "
            f"error is in that module, not in torchgraft{_traceback_hint()}"
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


def _binds(builder, positional: list[Any], options: dict[str, Any]) -> bool:
    """True when the arguments fit the builder's signature (or it has none to check)."""
    try:
        inspect.signature(builder).bind(*positional, **options)
    except TypeError:
        return False
    except ValueError:  # no signature (a builtin): cannot tell
        return True
    return True


def _show(positional: list[Any], options: dict[str, Any]) -> str:
    return ", ".join([*(repr(v) for v in positional), *(f"{k}={v!r}" for k, v in options.items())])


def _raised(exc: BaseException) -> str:
    """``KeyError: 'missing'`` — the type says as much as the text (a bare KeyError says
    only the key)."""
    text = printable(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _traceback_hint() -> str:
    # Python shows the chained traceback anyway; the command line shows it on request.
    return " (run again with --debug for its traceback)" if in_cli() else ""
