"""Change how many input channels a model takes (a grey or multispectral stem).

The first convolution is swapped for one with ``in_chans`` inputs and otherwise identical
settings. Its weights start fresh; when pretrained weights are grafted afterwards, the
graft adapts the pretrained 3-channel kernel to the new width and reports how.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
from torch import nn

from ..errors import SpecError
from ..wording import option
from ._modules import set_module
from .anatomy import spec_of
from .spec import SPEC_ATTRIBUTE, attach_spec

__all__ = ["replace_input_channels"]


def replace_input_channels(model: nn.Module, in_chans: int) -> nn.Module:
    """Make ``model`` take ``in_chans`` input channels, in place; returns the new first conv.

    Raises:
        SpecError: the model has no first convolution, or ``in_chans`` is not positive.
    """
    if in_chans < 1:
        raise SpecError(f"{option('in_chans')} must be a positive integer, got {in_chans}")
    spec = spec_of(model)
    if spec.first_conv is None:
        raise SpecError(f"{spec.name} has no input convolution whose channels could change")
    old = model.get_submodule(spec.first_conv)
    if not isinstance(old, nn.modules.conv._ConvNd):
        raise SpecError(f"{spec.name}: first_conv '{spec.first_conv}' is a {type(old).__name__}")
    if old.in_channels == in_chans:
        return old
    if old.groups != 1:
        raise SpecError(
            f"{spec.name}: the first convolution '{spec.first_conv}' is grouped "
            f"(groups={old.groups}); its input channels cannot be changed safely"
        )
    # A copy keeps the subclass and its settings (timm's Conv2dSame, StdConv2d, padding mode);
    # only the weight's input dimension changes.
    new = copy.deepcopy(old)
    new.in_channels = in_chans
    new.weight = nn.Parameter(
        torch.empty(
            old.out_channels,
            in_chans,
            *old.kernel_size,
            device=old.weight.device,
            dtype=old.weight.dtype,
        )
    )
    new.reset_parameters()
    set_module(model, spec.first_conv, new)
    if getattr(model, SPEC_ATTRIBUTE, None) is not None:
        attach_spec(
            model,
            dataclasses.replace(
                spec, in_chans=in_chans, preprocessing=spec.preprocessing.with_channels(in_chans)
            ),
        )
    return new
