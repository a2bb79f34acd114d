"""Adaptations: use a source tensor whose shape differs from the target's, when that is safe.

* ``reshape`` — same elements, other layout, roles agreeing: singleton dimensions
  (a layer scale stored as ``(C, 1, 1)`` vs ``(C,)``) or a weight flattened behind its first
  dimension (a Linear stored as a ``k x k`` conv and back);
* ``in_chans`` — the first convolution's kernel for another number of input channels:
  ``sum``, ``mean``, ``repeat`` (scaled so activations keep their size) or ``pick``;
* ``class_rows`` — a classifier whose classes changed: the rows of classes both sides name
  are copied, the others keep the target's fresh values;
* ``positions`` / ``relative_positions`` — a position embedding or relative-position table
  resampled for another patch grid or window (:mod:`.positions`);
* ``transpose`` — a bare matrix used as ``x @ W`` (OpenAI's CLIP stores its projections so)
  for a ``Linear`` (``W x``): a 2-D source, not a module's ``weight``, whose shape is the
  target's reversed.

:func:`propose` decides (pure, shapes only); :func:`apply_adaptation` computes the values.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from ...errors import GraftError
from ..graft_plan import Action
from .positions import ABSOLUTE, RELATIVE, PositionGrid, propose_resample, resampled

__all__ = ["IN_CHANS_MODES", "AdaptContext", "apply_adaptation", "propose"]

IN_CHANS_MODES = ("sum", "mean", "repeat", "pick")


@dataclass(frozen=True)
class AdaptContext:
    """What the target and source know that shapes alone do not.

    Attributes:
        first_conv_key: target key of the input convolution's weight.
        head_keys: target keys of the classifier(s) (weights and biases).
        in_chans_mode: how to adapt the first conv; None picks ``sum`` for one channel and
            ``repeat`` otherwise.
        pick: source channels to take with ``pick`` (default: the first ones).
        target_classes / source_classes: class names of the two heads, when known.
        keep_classes: only these classes take pretrained rows (None: every shared class).
        positions: target keys laid out on a patch grid or window (:func:`.position_grids`).
    """

    first_conv_key: str | None = None
    head_keys: frozenset[str] = frozenset()
    positions: Mapping[str, PositionGrid] = field(default_factory=dict)
    in_chans_mode: str | None = None
    pick: tuple[int, ...] | None = None
    target_classes: tuple[str, ...] | None = None
    source_classes: tuple[str, ...] | None = None
    keep_classes: tuple[str, ...] | None = None


def propose(
    target_key: str,
    target_shape: Sequence[int],
    source_shape: Sequence[int],
    context: AdaptContext,
    source_key: str | None = None,
) -> tuple[Action, dict[str, Any] | None, str]:
    """How to load a source of ``source_shape`` into ``target_key``.

    A 2-D source of the target's shape reversed is transposed only when ``source_key``
    names a bare matrix (``visual.proj``, ``text_projection``: used as ``x @ W``), never a
    module's ``weight``: two Linear weights of reversed shapes are two different layers.

    Returns:
        ``(action, adapt, detail)``: ``COPY`` when shapes are equal, ``RESHAPE``/``ADAPT``
        with the adaptation, or ``SKIP_SHAPE`` with the reason.
    """
    target_shape, source_shape = tuple(target_shape), tuple(source_shape)
    if target_key in context.head_keys:
        # Checked before equal shapes: the same number of classes in another order still
        # needs its rows moved.
        rows = _class_rows(target_shape, source_shape, context)
        if rows is not None:
            return rows
    if target_shape == source_shape:
        return Action.COPY, None, ""
    if target_key == context.first_conv_key:
        channels = _in_chans(target_shape, source_shape, context)
        if channels is not None:
            return channels
    if _numel(target_shape) == _numel(source_shape) and _layouts_agree(target_shape, source_shape):
        return Action.RESHAPE, {"kind": "reshape"}, "same elements, other layout"
    grid = context.positions.get(target_key)
    if grid is not None:
        resample, why = propose_resample(grid, target_shape, source_shape)
        if resample is None:
            return Action.SKIP_SHAPE, None, why
        return Action.ADAPT, resample, why
    if len(target_shape) == 2 and target_shape == source_shape[::-1] and _bare(source_key):
        return Action.ADAPT, {"kind": "transpose"}, "a bare matrix (x @ W): transposed"
    return (
        Action.SKIP_SHAPE,
        None,
        f"shape {list(source_shape)} cannot fill {list(target_shape)}",
    )


def apply_adaptation(
    source: torch.Tensor, target: torch.Tensor, adapt: Mapping[str, Any] | None
) -> torch.Tensor:
    """The value to copy into ``target`` (a new tensor; ``target`` is not modified).

    Every adaptation is checked against the tensors before any indexing, so a plan that does
    not fit (an edited plan, a plan for another source) fails with a :class:`GraftError`.

    Raises:
        GraftError: the adaptation does not fit these tensors, or its kind is unknown.
    """
    kind = (adapt or {}).get("kind")
    if kind is None:
        result = source
    elif kind == "reshape":
        if source.numel() != target.numel():
            raise GraftError(
                f"cannot reshape {list(source.shape)} ({source.numel()} elements) into "
                f"{list(target.shape)} ({target.numel()} elements)"
            )
        result = source.reshape(target.shape)
    elif kind == "in_chans":
        result = _checked_in_chans(source, target, adapt)
    elif kind == "class_rows":
        result = _class_rows_value(source, target, adapt.get("rows", []))
    elif kind in (ABSOLUTE, RELATIVE):
        result = resampled(source, target, adapt)
    elif kind == "transpose":
        if source.dim() != 2:
            raise GraftError(f"cannot transpose a {source.dim()}-d tensor {list(source.shape)}")
        result = source.t()
    else:
        raise GraftError(f"unknown adaptation kind '{kind}'")
    if tuple(result.shape) != tuple(target.shape):
        raise GraftError(
            f"adaptation {dict(adapt or {})} gives shape {list(result.shape)}, target needs "
            f"{list(target.shape)}"
        )
    return result


def _checked_in_chans(source: torch.Tensor, target: torch.Tensor, adapt: Mapping[str, Any]):
    mode = adapt.get("mode")
    if mode not in IN_CHANS_MODES:
        raise GraftError(f"in_chans mode {mode!r} is not one of {', '.join(IN_CHANS_MODES)}")
    if source.dim() < 3 or source.dim() != target.dim():
        raise GraftError(
            f"in_chans needs two conv kernels, got {list(source.shape)} and {list(target.shape)}"
        )
    pick = adapt.get("pick")
    if mode == "pick":
        pick = list(pick if pick is not None else range(target.shape[1]))
        if any(not 0 <= int(c) < source.shape[1] for c in pick):
            raise GraftError(f"pick={pick} names channels outside 0..{source.shape[1] - 1}")
    return _adapt_in_chans(source, target.shape[1], mode, pick)


def _class_rows_value(source: torch.Tensor, target: torch.Tensor, rows: Any) -> torch.Tensor:
    pairs = torch.as_tensor(rows, dtype=torch.long).reshape(-1, 2)
    if len(pairs):
        bad = (pairs[:, 0] < 0) | (pairs[:, 0] >= source.shape[0])
        bad |= (pairs[:, 1] < 0) | (pairs[:, 1] >= target.shape[0])
        if bool(bad.any()) or source.shape[1:] != target.shape[1:]:
            raise GraftError(
                f"class rows {pairs[bad].tolist() or rows} do not fit a source of "
                f"{list(source.shape)} and a target of {list(target.shape)}"
            )
    result = target.detach().clone()
    if len(pairs):
        result[pairs[:, 1]] = source[pairs[:, 0]].to(result.dtype)
    return result


def _in_chans(target_shape, source_shape, context: AdaptContext):
    if len(target_shape) < 3 or len(target_shape) != len(source_shape):
        return None  # (a 0-d source has no channels to index)
    if target_shape[0] != source_shape[0] or target_shape[2:] != source_shape[2:]:
        return None
    wanted, have = target_shape[1], source_shape[1]
    mode = context.in_chans_mode or ("sum" if wanted == 1 else "repeat")
    if mode not in IN_CHANS_MODES:
        raise GraftError(f"in_chans mode '{mode}' is not one of {', '.join(IN_CHANS_MODES)}")
    adapt: dict[str, Any] = {"kind": "in_chans", "mode": mode}
    if mode == "pick":
        pick = list(context.pick or range(min(wanted, have)))
        if len(pick) != wanted or any(not 0 <= c < have for c in pick):
            raise GraftError(f"pick={pick} must name {wanted} source channels in 0..{have - 1}")
        adapt["pick"] = pick
    elif mode in ("sum", "mean") and wanted != 1:
        raise GraftError(f"in_chans mode '{mode}' makes 1 channel; the target takes {wanted}")
    return Action.ADAPT, adapt, f"first conv {have}→{wanted} input channels ({mode})"


def _adapt_in_chans(source: torch.Tensor, wanted: int, mode: str, pick: Sequence[int] | None):
    # source: (out, in, *kernel)
    have = source.shape[1]
    if mode == "sum":
        return source.sum(dim=1, keepdim=True)
    if mode == "mean":
        return source.mean(dim=1, keepdim=True)
    if mode == "pick":
        return source[:, list(pick or range(wanted))]
    # repeat: tile the input channels, then scale so the summed response keeps its size.
    repeats = -(-wanted // have)
    tiled = source.repeat(1, repeats, *([1] * (source.dim() - 2)))[:, :wanted]
    return tiled * (have / wanted)


def _class_rows(target_shape, source_shape, context: AdaptContext):
    if not target_shape or target_shape[1:] != source_shape[1:]:
        return None
    if context.target_classes is None or context.source_classes is None:
        return None
    from ...model.heads import normalise_class

    same = [normalise_class(n) for n in context.target_classes] == [
        normalise_class(n) for n in context.source_classes
    ]
    if same:
        return None  # the same classes in the same order: a plain copy
    if len(context.target_classes) != target_shape[0]:
        return None
    if len(context.source_classes) != source_shape[0]:
        return None
    source_rows = {normalise_class(n): i for i, n in enumerate(context.source_classes)}
    wanted = (
        {normalise_class(n) for n in context.keep_classes}
        if context.keep_classes is not None
        else None
    )
    rows = [
        [source_rows[normalise_class(name)], t]
        for t, name in enumerate(context.target_classes)
        if normalise_class(name) in source_rows
        and (wanted is None or normalise_class(name) in wanted)
    ]
    detail = f"{len(rows)} of {target_shape[0]} classes start from pretrained rows"
    return Action.ADAPT, {"kind": "class_rows", "rows": rows}, detail


def _bare(source_key: str | None) -> bool:
    """A parameter of its own (``proj``), not a module's ``weight``."""
    return source_key is not None and source_key.rpartition(".")[2] != "weight"


def _layouts_agree(a: tuple[int, ...], b: tuple[int, ...]) -> bool:
    squeeze_a = tuple(d for d in a if d != 1)
    squeeze_b = tuple(d for d in b if d != 1)
    if squeeze_a == squeeze_b:
        return True
    # A weight flattened behind its first dimension: (out, in, k, k) <-> (out, in*k*k).
    return len(a) >= 2 and len(b) >= 2 and a[0] == b[0] and min(len(a), len(b)) == 2


def _numel(shape: Sequence[int]) -> int:
    count = 1
    for size in shape:
        count *= size
    return count
