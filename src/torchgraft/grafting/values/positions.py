"""Position embeddings and relative-position tables for another image size or window.

A ViT's absolute position embedding holds one vector per patch of its grid, after the
tokens that are not on the grid (class, distillation: the *prefix*); a model built for
another image size or patch grid has another grid. Swin's relative-position bias tables
hold ``(2W - 1)²`` rows for a window of ``W``. A graft into a model of another grid or
window resamples the source's values with the target library's own function, so that it
equals what that library does when it loads pretrained weights at another size:

* timm models: ``timm.layers.resample_abs_pos_embed`` (bicubic, antialiased; what
  ``vision_transformer.checkpoint_filter_fn`` does) and ``resize_rel_pos_bias_table``
  (what ``swin_transformer.checkpoint_filter_fn`` does);
* torchvision's VisionTransformer: ``interpolate_embeddings`` (bicubic, corners aligned);
  its Swin tables with timm's function (torchvision has none of its own).

An embedding stored with or without its leading dimension (``(L, D)``, as OpenAI's CLIP
stores it, or ``(1, L, D)``) is read either way. The source's grid is the square that its
length leaves after the target's prefix; a length that leaves no square is not guessed.
:func:`position_grids` finds the target's embeddings and grids from its modules;
:func:`resampled` computes a value.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ...errors import GraftError

__all__ = ["PositionGrid", "describe", "position_grids", "propose_resample", "resampled"]

ABSOLUTE = "positions"
RELATIVE = "relative_positions"


@dataclass(frozen=True)
class PositionGrid:
    """One target tensor laid out on a grid.

    Attributes:
        kind: :data:`ABSOLUTE` (a position embedding) or :data:`RELATIVE` (a bias table).
        grid: the target's patch grid (rows, columns), or its attention window.
        prefix: leading tokens that are not on the grid (absolute embeddings only).
        library: ``timm`` or ``torchvision``: whose function resamples.
    """

    kind: str
    grid: tuple[int, int]
    prefix: int = 0
    library: str = "timm"


def position_grids(model: nn.Module) -> dict[str, PositionGrid]:
    """``{state_dict key: PositionGrid}`` of the position embeddings and relative-position
    tables ``model`` holds, by the modules that own them (timm's and torchvision's ViTs and
    Swins, and any module laid out like them)."""
    found: dict[str, PositionGrid] = {}
    for name, module in model.named_modules():
        prefix = f"{name}." if name else ""
        library = "torchvision" if type(module).__module__.startswith("torchvision") else "timm"
        embedding = getattr(module, "pos_embed", None)
        grid = getattr(getattr(module, "patch_embed", None), "grid_size", None)
        if isinstance(embedding, nn.Parameter) and embedding.dim() == 3 and grid is not None:
            extra = 0 if getattr(module, "no_embed_class", False) else module.num_prefix_tokens
            found[f"{prefix}pos_embed"] = PositionGrid(ABSOLUTE, _pair(grid), int(extra), library)
        encoder = getattr(module, "encoder", None)
        size, patch = getattr(module, "image_size", None), getattr(module, "patch_size", None)
        if isinstance(getattr(encoder, "pos_embedding", None), nn.Parameter) and size and patch:
            side = int(size) // int(patch)  # torchvision: square images, one class token
            found[f"{prefix}encoder.pos_embedding"] = PositionGrid(
                ABSOLUTE, (side, side), 1, "torchvision"
            )
        table = getattr(module, "relative_position_bias_table", None)
        window = getattr(module, "window_size", None)
        if isinstance(table, nn.Parameter) and table.dim() == 2 and window is not None:
            found[f"{prefix}relative_position_bias_table"] = PositionGrid(
                RELATIVE, _pair(window), 0, library
            )
    return found


def _pair(size: Any) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    rows, columns = (int(s) for s in size)
    return rows, columns


def propose_resample(
    grid: PositionGrid, target_shape: Sequence[int], source_shape: Sequence[int]
) -> tuple[dict[str, Any] | None, str]:
    """``(adaptation, detail)`` that resamples a source of ``source_shape`` onto ``grid``;
    ``(None, why not)`` when the source is not laid out on a grid this target can read."""
    if grid.kind == RELATIVE:
        return _propose_relative(grid, target_shape, source_shape)
    width = target_shape[-1] if target_shape else 0
    if not source_shape or source_shape[-1] != width or any(d != 1 for d in source_shape[:-2]):
        return None, f"shape {list(source_shape)} is not a sequence of {width}-wide embeddings"
    length = math.prod(source_shape) // width
    side = math.isqrt(max(length - grid.prefix, 0))
    if side * side != length - grid.prefix or side == 0:
        return None, (
            f"{length} positions leave no square grid after the target's {grid.prefix} "
            "leading token(s)"
        )
    adaptation = {
        "kind": ABSOLUTE,
        "prefix": grid.prefix,
        "source_grid": [side, side],
        "grid": list(grid.grid),
        "library": grid.library,
    }
    return adaptation, describe(adaptation)


def _propose_relative(grid, target_shape, source_shape):
    if len(source_shape) != 2 or len(target_shape) != 2 or source_shape[1] != target_shape[1]:
        return None, f"shape {list(source_shape)} is not a table of {target_shape[1]} heads"
    rows = math.isqrt(source_shape[0])
    if rows * rows != source_shape[0] or rows % 2 == 0:
        return None, f"{source_shape[0]} rows are not the (2W - 1)² of a square window"
    adaptation = {
        "kind": RELATIVE,
        "source_grid": [(rows + 1) // 2] * 2,
        "grid": list(grid.grid),
        "library": "timm",
    }
    return adaptation, describe(adaptation)


def describe(adaptation: Mapping[str, Any]) -> str:
    """The plan's words for a resampling."""
    source = "×".join(map(str, adaptation["source_grid"]))
    target = "×".join(map(str, adaptation["grid"]))
    if adaptation["kind"] == RELATIVE:
        return f"relative-position table resized from window {source} to {target} (timm)"
    function = (
        "interpolate_embeddings"
        if adaptation["library"] == "torchvision"
        else "resample_abs_pos_embed"
    )
    return f"position embedding resampled from {source} to {target} patches ({function})"


def resampled(
    source: torch.Tensor, target: torch.Tensor, adaptation: Mapping[str, Any]
) -> torch.Tensor:
    """The source's values on the target's grid, in the target's shape.

    Raises:
        GraftError: the adaptation does not fit these tensors (an edited or foreign plan).
    """
    try:
        source_grid = _pair(adaptation["source_grid"])
        grid = _pair(adaptation["grid"])
        if adaptation["kind"] == RELATIVE:
            return _relative(source, target, source_grid, grid)
        return _absolute(source, target, int(adaptation["prefix"]), source_grid, grid, adaptation)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise GraftError(
            f"cannot resample {list(source.shape)} onto {list(target.shape)} as planned "
            f"({dict(adaptation)}): {exc}"
        ) from None


def _absolute(source, target, prefix, source_grid, grid, adaptation) -> torch.Tensor:
    width = target.shape[-1]
    embedding = source.detach().reshape(1, -1, width)
    if embedding.shape[1] != prefix + source_grid[0] * source_grid[1]:
        raise ValueError(f"{embedding.shape[1]} positions are not {prefix} + {source_grid}")
    if target.numel() != (prefix + grid[0] * grid[1]) * width:
        raise ValueError(f"the target does not hold {prefix} + {grid} positions")
    if adaptation.get("library") == "torchvision":
        from torchvision.models.vision_transformer import interpolate_embeddings

        if grid[0] != grid[1] or prefix != 1:
            raise ValueError("torchvision resamples square grids after one class token")
        # interpolate_embeddings reads the grid from image_size // patch_size: a patch of 1.
        state = interpolate_embeddings(grid[0], 1, {"encoder.pos_embedding": embedding})
        value = state["encoder.pos_embedding"]
    else:
        from timm.layers import resample_abs_pos_embed

        value = resample_abs_pos_embed(
            embedding, list(grid), old_size=list(source_grid), num_prefix_tokens=prefix
        )
    return value.reshape(target.shape).to(target.dtype)


def _relative(source, target, source_grid, grid) -> torch.Tensor:
    from timm.layers import resize_rel_pos_bias_table

    with warnings.catch_warnings():  # timm's own interpolator warns about torch's indexing
        warnings.simplefilter("ignore", UserWarning)
        value = resize_rel_pos_bias_table(
            source.detach().contiguous(),
            new_window_size=grid,
            new_bias_shape=tuple(target.shape),
            old_window_size=source_grid,
        )
    return value.reshape(target.shape).to(target.dtype)
