"""Builders that share a checkpoint's table: one answer when they compute the same.

Several builders can have the same ``{name: shape}`` table — timm's ``deit_base_patch16_224``
and ``vit_base_patch16_224``, torchvision's and timm's ``resnet18``, ``efficientnet_b0`` and
``tf_efficientnet_b0``. The table alone never picks one, because equal tables can compute
different functions (TF "same" padding, another BatchNorm epsilon or activation).

:func:`settle_equal_tables` runs them instead: each builder is built without weights, the
checkpoint is loaded into it as it is (names equal up to wrapper prefixes:
:func:`~torchgraft.grafting.verify.reference_model`), and all run on one seeded probe batch
(:func:`~torchgraft.grafting.verify.compare_models`, the verification's own comparison and
tolerance). When every one agrees with the first, they are one function with these weights
and the first stands for all (``Identification.same_function``); otherwise the result names
the largest difference and nothing is guessed. The specs come from the index (data): each
is checked against the recorded-builder rule before anything is built.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from ..grafting.verify import DEFAULT_TOLERANCE, compare_models, probe_input, reference_model
from ..model.build_record import check_recorded_builder
from .identification import Identification
from .meta_build import build_uninitialised

__all__ = ["MAX_EQUAL", "settle_equal_tables"]

#: At most this many builders sharing one table are built and run (each is a whole model).
MAX_EQUAL = 4


#: ``build(spec, num_classes)``: the architecture ``spec`` without weights (the zoo's
#: ``build_model(...).model``; passed in, so this module does not import the zoo package).
Build = Callable[[str, "int | None"], nn.Module]


def settle_equal_tables(
    found: Identification,
    tensors: Mapping[str, torch.Tensor],
    build: Build,
    known: Mapping[str, Any] | None = None,
) -> Identification:
    """``found`` with ``same_function`` and ``difference`` set when several builders share
    the checkpoint's table (``found.exact_all``); unchanged otherwise. ``build`` makes each.

    ``same_function`` is True when all of them, holding these ``tensors``, compute the same
    outputs on a probe batch (``found.exact`` then names the first), False when some differ
    (``difference``: the largest relative difference), and stays None when they could not be
    run (more than :data:`MAX_EQUAL`, a builder that fails, weights that do not load as they
    are, or probe inputs of different shapes) — ``comparison`` says why. ``known``: a verdict
    shipped with the package for these builders (:func:`.equal_verdicts.verdict`), used
    instead of running them.
    """
    specs = found.exact_all
    if len(specs) < 2:
        return found
    if known is not None:  # the package's verdict for these builders (.equal_verdicts)
        return dataclasses.replace(
            found,
            same_function=known["same_function"],
            difference=known["difference"],
            comparison=f"{known['comparison']}; decided when the package was built, on "
            "generic weights",
        )
    if len(specs) > MAX_EQUAL:
        why = f"{len(specs)} builders share the table: more than {MAX_EQUAL} are not run"
        return dataclasses.replace(found, comparison=why)
    try:
        references = [(spec, _loaded(spec, found, tensors, build)) for spec in specs]
    except Exception as exc:  # a builder can raise anything: identification is an extra
        return dataclasses.replace(found, comparison=f"not compared: {exc}")
    first_spec, first = references[0]
    example = probe_input(first)
    worst = 0.0
    for _spec, reference in references[1:]:
        if tuple(probe_input(reference).shape) != tuple(example.shape):
            return dataclasses.replace(found, comparison="not compared: other input sizes")
        result = compare_models(reference, first, example, source=first_spec)
        worst = max(worst, result.feature_rel_diff, result.output_rel_diff or 0.0)
    same = worst <= DEFAULT_TOLERANCE
    shown = f"{worst:.2e}"
    comparison = (
        f"the same function: outputs agree within {DEFAULT_TOLERANCE:.0e} on a probe batch "
        f"(largest difference {shown})"
        if same
        else f"different functions: outputs differ by {shown} on a probe batch"
    )
    return dataclasses.replace(found, same_function=same, difference=worst, comparison=comparison)


def _loaded(spec: str, found: Identification, tensors, build: Build) -> nn.Module:
    """``spec`` built without weights, holding ``tensors`` (the classifier's classes taken
    from the checkpoint when they differ from the builder's default)."""
    # The index is a file in the cache: the names it holds never select code by themselves.
    check_recorded_builder(spec, "the architecture index")
    classes = found.num_classes if found.head == "different" else None
    if found.head == "absent":  # the classifier is not in the file: initialised as usual
        return reference_model(build(spec, classes), tensors, copy_first=False)
    # Every parameter is in the file (the same table): their initialisation is wasted time.
    model = build_uninitialised(lambda: build(spec, classes))
    return reference_model(model, tensors, copy_first=False)
