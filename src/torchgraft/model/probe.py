"""One probe forward pass that records which modules run, in what order, with what output.

The pass runs on the ``meta`` device through :func:`torch.func.functional_call`: no
arithmetic is done, no memory is allocated for activations, and the model's own tensors,
BatchNorm statistics and train/eval flags are left exactly as they were. Models whose
forward cannot run on ``meta`` (data-dependent Python control flow) fall back to one real
forward under ``torch.no_grad()`` in eval mode.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import SpecError
from ._modules import is_conv
from .passes import evaluating

__all__ = ["ForwardTrace", "example_input_for", "primary_output", "trace_forward"]

#: Spatial sizes tried, in order, when the caller does not say which one the model takes.
COMMON_SIZES = (224, 32, 28, 64, 96, 128, 256, 299)


@dataclass(frozen=True)
class ForwardTrace:
    """What one forward pass touched.

    Attributes:
        order: module paths in the order of their first call ("" is the root).
        output_shapes: shape of each module's first tensor output.
        output_shape: shape of the model's primary output (the first tensor, or ``logits``).
        input_shape: shape of the input used.
    """

    order: tuple[str, ...]
    output_shapes: dict[str, tuple[int, ...]]
    output_shape: tuple[int, ...]
    input_shape: tuple[int, ...]

    def ran(self, path: str) -> bool:
        return path in self.output_shapes


def primary_output(output: object) -> torch.Tensor | None:
    """The tensor that holds a model's class scores.

    A tensor is itself; a tuple or list gives its first tensor; a dict or an object with
    ``logits`` (Hugging Face outputs) gives that, else its first tensor value.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = output.get("logits") if isinstance(output, dict) else getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    values = output.values() if isinstance(output, dict) else output
    if isinstance(values, (tuple, list)) or isinstance(output, dict):
        for value in values:
            found = primary_output(value)
            if found is not None:
                return found
    return None


def example_input_for(
    model: nn.Module, size: int | tuple[int, ...], batch: int = 2, channels: int | None = None
) -> torch.Tensor:
    """A meta-device input shaped for the model's first layer.

    The first convolution (in registration order) fixes dimensionality and, unless
    ``channels`` is given, the channels; a model without convolutions gets
    ``(batch, in_features)`` of its first Linear.

    Raises:
        SpecError: neither a convolution nor a Linear layer exists to tell the input shape.
    """
    for module in model.modules():
        if is_conv(module):
            spatial = tuple(size) if isinstance(size, tuple) else (size,) * len(module.kernel_size)
            width = channels if channels is not None else module.in_channels
            return torch.empty(batch, width, *spatial, device="meta")
        if isinstance(module, nn.Linear):
            return torch.empty(batch, module.in_features, device="meta")
    raise SpecError(
        f"cannot tell what input {type(model).__name__} takes (no convolution or Linear layer); "
        "pass example_input=torch.randn(...)"
    )


def trace_forward(
    model: nn.Module,
    example_input: torch.Tensor | None = None,
    sizes: Sequence[int | tuple[int, ...]] = COMMON_SIZES,
) -> ForwardTrace:
    """Run one side-effect-free forward pass and record the modules it called.

    Args:
        model: the model; nothing about it is changed.
        example_input: the input to use; when None, one is made for each of ``sizes`` until a
            pass succeeds (a LeNet takes 32, a ResNet any of them).
        sizes: spatial sizes to try when no example input is given (with the first conv's
            channels, then with 3).

    Raises:
        SpecError: no pass succeeded; the message holds the last error.
    """
    if example_input is not None:
        candidates = [example_input]
    else:
        # The first conv's width first; then RGB, for stems that rearrange the image before
        # their first conv (timm's TResNet turns 3 channels into 48 by space-to-depth).
        candidates = [example_input_for(model, s) for s in sizes]
        if candidates[0].dim() > 2 and candidates[0].shape[1] != 3:
            candidates += [example_input_for(model, s, channels=3) for s in sizes]
    last_error: Exception | None = None
    for candidate in candidates:
        try:
            return _trace_once(model, candidate)
        except Exception as exc:  # a model's forward can raise anything on a wrong shape
            last_error = exc
    shapes = ", ".join(str(tuple(c.shape)) for c in candidates)
    raise SpecError(
        f"a probe forward pass of {type(model).__name__} failed for input shapes {shapes}: "
        f"{last_error}. Pass example_input= with a shape the model accepts"
    ) from last_error


def _trace_once(model: nn.Module, example_input: torch.Tensor) -> ForwardTrace:
    try:
        return _run_with_hooks(model, example_input, on_meta=True)
    except Exception:
        # Some forwards need real values (``.item()``, data-dependent branches).
        return _run_with_hooks(model, example_input, on_meta=False)


def _run_with_hooks(model: nn.Module, example_input: torch.Tensor, on_meta: bool) -> ForwardTrace:
    order: list[str] = []
    shapes: dict[str, tuple[int, ...]] = {}

    def make_hook(path: str):
        def hook(_module, _inputs, output):
            tensor = primary_output(output)
            if path not in shapes:
                order.append(path)
                shapes[path] = tuple(tensor.shape) if tensor is not None else ()

        return hook

    hooks = [(m, "forward", make_hook(p)) for p, m in model.named_modules()]
    with evaluating(model, hooks, grad=False):
        if on_meta:
            state = {
                name: torch.empty_like(t, device="meta")
                for name, t in [*model.named_parameters(), *model.named_buffers()]
            }
            output = torch.func.functional_call(
                model, state, (example_input.to("meta"),), strict=False
            )
        else:
            device = next((p.device for p in model.parameters()), torch.device("cpu"))
            dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
            real = torch.zeros(example_input.shape, device=device, dtype=dtype)
            output = model(real)
    tensor = primary_output(output)
    if tensor is None:
        raise SpecError(f"{type(model).__name__} returned no tensor ({type(output).__name__})")
    return ForwardTrace(tuple(order), shapes, tuple(tensor.shape), tuple(example_input.shape))
