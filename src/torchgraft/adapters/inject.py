"""add_adapters: LoRA/DoRA put on a model in place, and what trains set accordingly.

The recipe: settings checked → targets chosen (nothing touched yet) → peft's layers injected
(all or nothing, :mod:`.peft_layers`) → every parameter's ``requires_grad`` set: the adapters
and the head train, every base weight is frozen → the summary recorded on the model (as
``model.torchgraft_adapters``; :func:`torchgraft.adapters.adapter_config` reads it back).

What is not done here: BatchNorm statistics. Frozen base weights do not stop running
statistics from moving in ``train()`` mode; the engine's BatchNorm policy
(:func:`torchgraft.freeze`'s ``bn=``) owns that, and no norm module is changed here.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from ..errors import AdapterError
from ..model.anatomy import spec_of
from ..model.spec import ModelSpec
from .peft_layers import adapter_layers, adapter_tensor_names, inject, peft_version, require_peft
from .selection import LeftOut, Target, auto_targets, named_targets
from .settings import AdapterSettings
from .summary import AdapterSummary

__all__ = ["RECORD_ATTRIBUTE", "adapt", "add_adapters", "recorded_summary", "trainable_names"]

#: The attribute under which the summary of a model's adapters is kept on the model.
RECORD_ATTRIBUTE = "torchgraft_adapters"


def add_adapters(
    model: nn.Module,
    *,
    method: str = "lora",
    rank: int = 8,
    alpha: float = 16,
    dropout: float = 0.0,
    targets: str | Sequence[str] = "auto",
    spec: ModelSpec | None = None,
) -> AdapterSummary:
    """Add LoRA or DoRA adapters (Hugging Face peft's layers) to ``model``, in place.

    The model keeps its class, spec and forward; at first it computes exactly what it did
    (each update starts at zero). Afterwards only the adapters and the head train: every
    other parameter has ``requires_grad=False``. BatchNorm statistics are left to the
    caller's policy (:func:`torchgraft.freeze`).

    Args:
        model: the model, usually from :func:`torchgraft.create_model` (its spec names the head).
        method: ``"lora"`` or ``"dora"``.
        rank: rank of each update (≥ 1).
        alpha: each update is scaled by ``alpha / rank``.
        dropout: dropout on each adapter's input while training, in ``[0, 1)``.
        targets: ``"auto"`` (from the anatomy: attention projections and MLP linears, or
            pointwise convolutions and linears; never the head, stem or depthwise
            convolutions — :mod:`torchgraft.adapters.selection`), or a glob or list of globs
            of dotted module paths (``"blocks.*.attn.qkv"``).
        spec: the model's spec (default: :func:`torchgraft.spec_of`).

    Returns:
        the :class:`AdapterSummary`: targets with reasons, what was left out, parameter counts.

    Raises:
        AdapterError: a bad setting; a model that already has adapters; a glob that matches
            nothing or a module that cannot carry an adapter (named with its type). The
            model is unchanged.
        MissingExtraError: peft is not installed.

    Example:
        >>> summary = tg.add_adapters(model, method="lora", rank=8)
        >>> print(summary)
        LoRA adapters, rank 8, alpha 16 (scale 2), dropout 0, peft 0.22.0 …
    """
    settings = AdapterSettings(method, rank, alpha, dropout)
    require_peft()
    _refuse_adapted(model)
    spec = spec or spec_of(model)
    if isinstance(targets, str) and targets == "auto":
        chosen, left_out = auto_targets(model, spec)
    else:
        chosen, left_out = named_targets(model, spec, targets), []
    return adapt(model, settings, chosen, left_out, spec)


def adapt(
    model: nn.Module,
    settings: AdapterSettings,
    targets: Sequence[Target],
    left_out: Sequence[LeftOut],
    spec: ModelSpec,
) -> AdapterSummary:
    """Inject adapters on ``targets`` (already chosen and checked), set what trains, record it.

    Raises:
        AdapterError: the model already has adapters, or peft refused (model unchanged).
    """
    _refuse_adapted(model)
    order = {name: i for i, (name, _) in enumerate(model.named_modules())}
    targets = sorted(targets, key=lambda t: order[t.name])
    inject(model, settings, [t.name for t in targets])
    trains = set(adapter_tensor_names(model))
    heads = tuple(p for p in spec.head_paths if p)
    for name, parameter in model.named_parameters():
        in_head = any(name.startswith(f"{h}.") for h in heads)
        parameter.requires_grad_(name in trains or in_head)
    parameters = list(model.parameters())
    summary = AdapterSummary(
        settings=settings,
        targets=tuple(targets),
        left_out=tuple(left_out),
        head_paths=heads,
        trainable=sum(p.numel() for p in parameters if p.requires_grad),
        total=sum(p.numel() for p in parameters),
        peft_version=peft_version(),
    )
    # object.__setattr__: a plain attribute, never a submodule, parameter or state_dict entry
    object.__setattr__(model, RECORD_ATTRIBUTE, summary)
    return summary


def recorded_summary(model: nn.Module) -> AdapterSummary:
    """The summary :func:`add_adapters` recorded on ``model``.

    Raises:
        AdapterError: the model has no adapters from torchgraft (none, or peft's own).
    """
    summary = vars(model).get(RECORD_ATTRIBUTE)
    if not isinstance(summary, AdapterSummary) or not adapter_layers(model):
        raise AdapterError(
            f"this {type(model).__name__} has no adapters added by torchgraft; "
            "add them with tg.add_adapters(model) (or tg.load_adapters to restore saved ones)"
        )
    return summary


def trainable_names(model: nn.Module) -> frozenset[str] | None:
    """The parameters that may train in a model with torchgraft's adapters — the adapters'
    own and the head's — or None for a model without them (everything may train).

    Freezing policies and unfreezing schedules decide among these only
    (:func:`torchgraft.freeze`): with adapters, a policy that trains a layer group trains its
    adapters, never its weights.
    """
    summary = vars(model).get(RECORD_ATTRIBUTE)
    if not isinstance(summary, AdapterSummary):
        return None
    adapters = set(adapter_tensor_names(model))
    heads = summary.head_paths
    return frozenset(
        name
        for name, _ in model.named_parameters()
        if name in adapters or any(name.startswith(f"{h}.") for h in heads)
    )


def _refuse_adapted(model: nn.Module) -> None:
    layers = adapter_layers(model)
    if layers or "peft_config" in vars(model):
        names = ", ".join(list(layers)[:3]) or "(peft_config set)"
        raise AdapterError(
            f"this {type(model).__name__} already has adapters ({names}); adding more would "
            "stack a second set on the first. Merge them first (tg.merge_adapters) or start "
            "from a model without adapters"
        )
