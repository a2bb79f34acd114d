"""Build a zoo architecture without tensor memory and read its state_dict table.

Used by :mod:`.arch_index`. The model is built inside ``torch.device("meta")``: every tensor
the builder creates is a shape without storage, so a 600M-parameter RegNet costs no memory
and no random initialisation. Builders that compute sizes with tensors (``.tolist()`` on
a meta tensor fails) are retried with only the layers' own tensors moved to ``meta`` as they
are registered. Builds run quietly (no warnings, prints or log lines) and are given up after
:data:`BUILD_SECONDS`: the clock is checked at every torch call the builder makes, a point where
raising unwinds like any builder error (a signal could strike inside ``torch.device``'s own
``__enter__`` and leave the default device set to meta for the rest of the process).
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["BUILD_SECONDS", "arch_table", "build_on_meta", "build_uninitialised"]

#: Seconds one architecture may take to build before it is given up.
BUILD_SECONDS = 60.0
#: Loggers silenced while building.
LOGGERS = ("torchvision", "timm")

Shapes = dict[str, tuple[int, ...]]

#: In-place tensor methods that change values only, never shapes: initialisation code.
_VALUE_ONLY_NAMES = """
normal_ uniform_ fill_ zero_ erfinv_ clamp_ clamp_min_ clamp_max_ mul_ add_ sub_ div_ copy_
exp_ log_ sqrt_ neg_ abs_ pow_ bernoulli_ random_ exponential_ log_normal_ cauchy_ geometric_
fill_diagonal_ masked_fill_ addcmul_ addcdiv_ lerp_ sign_ floor_ ceil_ round_ trunc_
reciprocal_ sigmoid_ tanh_ orthogonal_
"""
VALUE_ONLY = frozenset(_VALUE_ONLY_NAMES.split())


class _TooSlow(TimeoutError):
    pass


class _SkipInit(TorchFunctionMode):
    """Skip value-only in-place ops on meta tensors, and give up after ``deadline``.

    The skipped ops cannot change anything on meta, yet some run as slow Python
    decompositions (timm's ``trunc_normal_``: ``erfinv_`` and ``clamp_`` took 2-5x the rest
    of a ViT's build).
    """

    def __init__(self, deadline: float) -> None:
        super().__init__()
        self.deadline = deadline

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if time.monotonic() > self.deadline:
            raise _TooSlow(f"took longer than {BUILD_SECONDS:g} s to build; skipped")
        if (
            getattr(func, "__name__", "") in VALUE_ONLY
            and args
            and isinstance(args[0], torch.Tensor)
            and args[0].is_meta
        ):
            return args[0]
        return func(*args, **(kwargs or {}))


def arch_table(library: str, name: str, **kwargs: Any) -> tuple[Shapes, Shapes]:
    """``name``'s state_dict as ``{key: shape}``, built without tensor memory, and the part
    of it that is the declared classifier (``{key: shape}``, empty when none is declared).

    Raises:
        TimeoutError: the build took longer than :data:`BUILD_SECONDS`.
        Exception: whatever the builder raises on ``meta`` and with parameters moved to
            ``meta`` as they are registered.
    """
    build, heads = _builder(library, name, kwargs)
    model = build_on_meta(build)
    table = {k: tuple(t.shape) for k, t in model.state_dict().items()}
    paths = heads(model)
    head = {k: s for k, s in table.items() if any(k.startswith(f"{p}.") for p in paths)}
    return table, head


def build_on_meta(build: Callable[[], nn.Module]) -> nn.Module:
    """What ``build()`` returns, built quietly without tensor memory (see the module docstring).

    Raises:
        TimeoutError: the build took longer than :data:`BUILD_SECONDS`.
        Exception: whatever the builder raises in both ways of building on ``meta``.
    """
    deadline = time.monotonic() + BUILD_SECONDS
    with _quiet():
        try:
            with torch.device("meta"), _SkipInit(deadline):
                return build()
        except _TooSlow:
            raise
        except Exception:
            # Builders that compute sizes with tensors (``.tolist()``) cannot run with every
            # tensor on meta; the layers' own tensors can still be moved there as registered.
            with _parameters_on_meta(), _SkipInit(deadline):
                return build()


class _SkipParameterInit(TorchFunctionMode):
    """Skip value-only in-place ops on parameters: their random initialisation."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if (
            getattr(func, "__name__", "") in VALUE_ONLY
            and args
            and isinstance(args[0], nn.Parameter)
        ):
            return args[0]
        return func(*args, **(kwargs or {}))


def build_uninitialised(build: Callable[[], nn.Module]) -> nn.Module:
    """What ``build()`` returns, with the random initialisation of its parameters skipped
    (a ViT-B's takes a second): for a model whose every parameter is loaded next. Until then
    parameters hold whatever memory they were given; buffers are computed as usual (only
    in-place ops *on parameters* are skipped, so a position index built with ``+=`` is
    right)."""
    with _SkipParameterInit():
        return build()


def _builder(library: str, name: str, kwargs: dict[str, Any]):
    """``(build, heads)``: a no-argument builder, and the model's declared head paths."""
    if library == "torchvision":
        import torchvision

        from .torchvision import NO_WEIGHTS_KWARGS, declared_heads

        options = {**NO_WEIGHTS_KWARGS.get(name, {}), **kwargs}
        builder = torchvision.models.get_model_builder(name)
        return (lambda: builder(weights=None, **options)), (lambda _: declared_heads(name))
    import timm

    def timm_heads(model) -> tuple[str, ...]:
        declared = (getattr(model, "pretrained_cfg", None) or {}).get("classifier") or ()
        return (declared,) if isinstance(declared, str) else tuple(declared)

    return (lambda: timm.create_model(name, pretrained=False, **kwargs)), timm_heads


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warnings, prints or library log lines while building (the index is built quietly)."""
    loggers = [logging.getLogger(n) for n in LOGGERS]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


@contextlib.contextmanager
def _parameters_on_meta() -> Iterator[None]:
    """Move each parameter and buffer to ``meta`` as a module registers it (not thread-safe:
    ``nn.Module`` itself is patched for the duration). Layers create their parameters with
    ``torch.empty``, whose pages are never touched, and initialise them after registration,
    on meta — so no real memory is filled, while the builder's own arithmetic runs on CPU."""
    register_parameter, register_buffer = nn.Module.register_parameter, nn.Module.register_buffer

    def parameter(self, name, param):
        if type(param) is nn.Parameter and param.device.type != "meta":
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register_parameter(self, name, param)

    def buffer(self, name, tensor, persistent=True):
        if tensor is not None and tensor.device.type != "meta":
            tensor = tensor.to("meta")
        register_buffer(self, name, tensor, persistent)

    nn.Module.register_parameter, nn.Module.register_buffer = parameter, buffer
    try:
        yield
    finally:
        nn.Module.register_parameter = register_parameter
        nn.Module.register_buffer = register_buffer
