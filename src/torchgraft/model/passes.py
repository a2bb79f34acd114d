"""Forward passes that leave the model as they found it.

Every pass torchgraft makes to *look* at a model runs the same way: every module in eval
mode, some hooks attached, autograd off (or on), and afterwards the model exactly as before.
The probe (:mod:`.probe`), verification and tie-settling in grafting, the feature cache and
the memory measure in the engine all go through :func:`evaluating`; :func:`hooked` is its
hook half alone, for a module's own forward that must leave modes to its caller (the frozen
body's feature extractor).

Why each module's flag, not only the root's: a model may hold modules whose mode differs
from its root's — a BatchNorm in eval inside a training model (``policies/freezing.py`` pins
frozen norms so; a user may call ``.eval()`` on one submodule). ``model.train(flag)`` after
the pass would set every child to the root's flag and lose them; restoring each module's
own ``training`` attribute does not (and calls no ``train()`` override on the way).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal, NamedTuple

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

__all__ = ["Hook", "evaluating", "hooked"]


class Hook(NamedTuple):
    """One hook for the length of a pass; a plain tuple in this order does as well.

    Attributes:
        module: the module it is attached to.
        when: ``"pre"``: ``fn(module, args)`` before the module's forward (may return new
            args); ``"forward"``: ``fn(module, args, output)`` after it (may return a new
            output).
        fn: the hook, as :meth:`~torch.nn.Module.register_forward_pre_hook` and
            :meth:`~torch.nn.Module.register_forward_hook` take it.
        prepend: run before the hooks the module already has (e.g. freezing's statistics
            pin) rather than after them.
    """

    module: nn.Module
    when: Literal["pre", "forward"]
    fn: Callable[..., Any]
    prepend: bool = False


@contextlib.contextmanager
def hooked(hooks: Iterable[Hook | tuple]) -> Iterator[list[RemovableHandle]]:
    """The ``hooks`` attached for the block, every one removed when it ends.

    Removed however the block ends: normally, or by an exception — also one raised from a
    hook (an early stop), or from registering a later hook of the list (an unknown ``when``).

    Yields:
        the handles, in the order of ``hooks`` (removing one early is allowed).

    Raises:
        ValueError: a ``when`` other than ``"pre"`` or ``"forward"``.
    """
    handles: list[RemovableHandle] = []
    try:
        for spec in hooks:
            handles.append(_register(Hook(*spec)))
        yield handles
    finally:
        for handle in handles:
            handle.remove()  # idempotent: a handle removed early is skipped


@contextlib.contextmanager
def evaluating(
    model: nn.Module,
    hooks: Iterable[Hook | tuple] = (),
    *,
    grad: bool | Literal["inference"] = False,
) -> Iterator[list[RemovableHandle]]:
    """``model`` in eval mode with ``hooks`` attached for the block; then as it was.

    On exit, however the block ends (an exception, an early stop raised from a hook), every
    hook is removed and every module's ``training`` flag is set back to what it was on
    entry, module by module (see the module docstring). Nothing else is touched: parameters,
    buffers and ``requires_grad`` are the caller's (an eval pass moves no statistics).

    Args:
        model: the model; ``model.eval()`` for the block.
        hooks: attached as :func:`hooked` attaches them; any module, usually ``model``'s own.
        grad: autograd inside the block. False: ``torch.no_grad()`` (a pass to look at, no
            graph kept); True: ``torch.enable_grad()`` (recorded even when the caller turned
            it off: a pass that measures what autograd keeps); ``"inference"``:
            ``torch.inference_mode()`` (faster still; tensors made there cannot enter
            autograd later, clone them outside).

    Yields:
        the hooks' handles, as :func:`hooked` yields them.

    Raises:
        ValueError: another ``grad``, or a hook's unknown ``when`` (the model untouched).
    """
    autograd = _autograd(grad)  # refused before any mode changes
    modes = [(module, module.training) for module in model.modules()]
    try:
        model.eval()
        with hooked(hooks) as handles, autograd:
            yield handles
    finally:
        for module, training in modes:
            # the attribute, not module.train(): train() recurses into the children
            module.training = training


def _register(hook: Hook) -> RemovableHandle:
    if hook.when == "pre":
        return hook.module.register_forward_pre_hook(hook.fn, prepend=hook.prepend)
    if hook.when == "forward":
        return hook.module.register_forward_hook(hook.fn, prepend=hook.prepend)
    raise ValueError(
        f"a hook runs 'pre' or 'forward' (before or after the forward), not {hook.when!r}"
    )


def _autograd(grad: bool | str) -> contextlib.AbstractContextManager:
    if grad == "inference":
        return torch.inference_mode()
    if grad is True:
        return torch.enable_grad()
    if grad is False:
        return torch.no_grad()
    raise ValueError(f"grad is True, False or 'inference', not {grad!r}")
