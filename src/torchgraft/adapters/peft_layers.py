"""The boundary with Hugging Face peft: its LoRA/DoRA layers put into a model and taken out.

Everything that touches peft goes through here, and peft is imported only when one of
these functions runs (``import torchgraft`` stays fast; without peft installed the error
names the ``[peft]`` extra).

How the layers get in: :func:`peft.inject_adapter_in_model` with a ``LoraConfig`` whose
``target_modules`` is one regular expression that fullmatches exactly the chosen module
paths. (A *list* of names would be matched by suffix — ``"conv"`` would also catch
``"layer1.conv"`` — so the list is not used.) peft swaps each target for its own layer
(``lora.Linear``, ``lora.Conv2d``) holding the original module as ``base_layer``, in place:
the model keeps its class, its spec and its forward, and no ``PeftModel`` wraps it. What
changes are the state_dict keys of a target (``qkv.weight`` → ``qkv.base_layer.weight``, plus
``qkv.lora_A.default.weight`` …) until the adapters are merged or unloaded, and the attribute
``model.peft_config`` peft leaves behind.

How they get out: each adapter layer is replaced by its ``base_layer`` (after merging, when
asked), which restores the module — and so every state_dict key — of the architecture.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from ..errors import AdapterError, MissingExtraError
from .settings import AdapterSettings

__all__ = [
    "ADAPTER_NAME",
    "adapter_layers",
    "adapter_tensor_names",
    "inject",
    "peft_version",
    "put_module",
    "require_peft",
    "unload",
]

#: peft names each adapter; torchgraft puts one on a model, under peft's default name.
ADAPTER_NAME = "default"


def require_peft() -> Any:
    """The ``peft`` module.

    Raises:
        MissingExtraError: peft is not installed (names the extra to install).
    """
    try:
        import peft
    except ImportError as exc:
        raise MissingExtraError(
            f"LoRA/DoRA adapters need Hugging Face peft, which is not importable ({exc}); "
            'install it with: pip install "torchgraft[peft]"'
        ) from None
    return peft


def peft_version() -> str:
    return str(require_peft().__version__)


def adapter_layers(model: nn.Module) -> dict[str, nn.Module]:
    """``{path: layer}`` of every peft adapter layer in ``model``, outermost ones only.

    A layer inside another one (the ``out_proj`` peft adapts within its own
    ``MultiheadAttention`` layer) belongs to its outer layer and is not listed.
    """
    require_peft()
    from peft.tuners.tuners_utils import BaseTunerLayer

    found: dict[str, nn.Module] = {}
    for path, module in model.named_modules():
        if isinstance(module, BaseTunerLayer) and not any(
            path.startswith(f"{outer}.") for outer in found
        ):
            found[path] = module
    return found


def adapter_tensor_names(model: nn.Module) -> list[str]:
    """The state_dict keys of the adapters' own tensors (A, B, DoRA magnitudes), in order.

    Found structurally — the sub-modules each peft layer declares as adapter parts
    (``adapter_layer_names``) — not by matching names, so a base module that happens to be
    called ``lora_A`` is not mistaken for one.
    """
    prefixes = tuple(
        f"{path}.{part}." if path else f"{part}."
        for path, layer in adapter_layers(model).items()
        for part in layer.adapter_layer_names
    )
    return [key for key in model.state_dict() if key.startswith(prefixes)]


def inject(model: nn.Module, settings: AdapterSettings, names: Iterable[str]) -> None:
    """Put a peft adapter layer in place of each module of ``names`` (exact paths).

    All or nothing: if peft refuses one target, or adapts other modules than asked, every
    layer it put in is taken out again and the model is as it was.

    Raises:
        AdapterError: peft refused (its reason quoted) or adapted other modules than asked.
    """
    peft = require_peft()
    names = list(names)
    config = peft.LoraConfig(
        # one expression, fullmatched by peft: exactly these paths (see the module docstring)
        target_modules="|".join(re.escape(name) for name in names),
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        use_dora=settings.method == "dora",
        bias="none",
        # B starts at zero: the adapted model computes exactly what the model did
        init_lora_weights=True,
    )
    try:
        peft.inject_adapter_in_model(config, model, adapter_name=ADAPTER_NAME)
    except (ValueError, TypeError, RuntimeError) as exc:
        unload(model)
        raise AdapterError(f"peft could not add {settings.method} adapters: {exc}") from None
    layers = adapter_layers(model)
    for layer in layers.values():
        # peft's new modules start in train mode; an eval model would run adapter dropout
        # until its next .eval(). Each takes the mode of the module it stands in for.
        base = layer.get_base_layer()
        for module in layer.modules():
            module.training = base.training
    adapted = set(layers)
    if adapted != set(names):
        unload(model)
        extra, lost = sorted(adapted - set(names)), sorted(set(names) - adapted)
        raise AdapterError(
            f"peft adapted other modules than asked (also: {extra[:5]}, not: {lost[:5]}); "
            "nothing was changed. Name the targets with globs that match exactly what you want"
        )


def unload(model: nn.Module, layers: Mapping[str, nn.Module] | None = None) -> None:
    """Replace each adapter layer by its base module, without merging; forget peft's config.

    Args:
        layers: ``{path: layer}`` to take out (default: every adapter layer in ``model``).
    """
    for path, layer in (adapter_layers(model) if layers is None else layers).items():
        put_module(model, path, layer.get_base_layer())
    if "peft_config" in vars(model):
        del model.peft_config


def put_module(model: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at the dotted ``path`` of ``model`` (the model itself cannot be one)."""
    if not path:
        raise AdapterError("the model itself cannot be an adapter target; name one of its layers")
    parent_path, _, name = path.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    setattr(parent, name, module)
