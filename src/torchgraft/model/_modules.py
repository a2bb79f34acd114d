"""Small helpers on module trees shared by anatomy, heads and stem surgery."""

from __future__ import annotations

from torch import nn

from ..errors import HeadError

__all__ = [
    "final_layer",
    "final_layer_path",
    "in_features",
    "is_conv",
    "out_features",
    "set_module",
]


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


def final_layer_path(model: nn.Module, path: str) -> str:
    """Path of the last Linear/conv inside the module at ``path`` (``path`` itself if it is one)."""
    module = model.get_submodule(path)
    if out_features(module) is not None:
        return path
    inner = [p for p, m in module.named_modules() if out_features(m) is not None]
    if not inner:
        raise HeadError(
            f"the head '{path}' ({type(module).__name__}) holds no Linear or convolution layer"
        )
    return f"{path}.{inner[-1]}"


def final_layer(module: nn.Module) -> nn.Module:
    """The last Linear/conv inside ``module`` (the module itself when it is one)."""
    if out_features(module) is not None:
        return module
    layers = [m for m in module.modules() if out_features(m) is not None]
    if not layers:
        raise HeadError(f"the head {type(module).__name__} holds no Linear or convolution layer")
    return layers[-1]
