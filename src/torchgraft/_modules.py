"""Small helpers on module trees shared by anatomy, heads and stem surgery."""

from __future__ import annotations

from torch import nn

__all__ = ["in_features", "is_conv", "out_features", "set_module"]


def is_conv(module: nn.Module) -> bool:
    """A forward (not transposed) convolution of any dimensionality."""
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def out_features(module: nn.Module) -> int | None:
    """Output width of a Linear or convolution layer, else None."""
    if isinstance(module, nn.Linear):
        return module.out_features
    return module.out_channels if is_conv(module) else None


def in_features(module: nn.Module) -> int | None:
    """Input width of a Linear or convolution layer, else None."""
    if isinstance(module, nn.Linear):
        return module.in_features
    return module.in_channels if is_conv(module) else None


def set_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at dotted ``path`` (``"classifier.6"`` included) inside ``model``."""
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    # nn.Module.__setattr__ drops the old child from _modules, so its parameters leave
    # parameters() and state_dict().
    setattr(parent, name, module)
