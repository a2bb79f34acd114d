"""The model of a run: build, stem, head, graft (and verify), initialise what is new.

The same road as :func:`torchgraft.create_model`, with the run's head options and the proof
the config asks for: the architecture is built with its native head, the head replaced for
the run's classes, and the pretrained weights grafted in — so the old head shows up in the
report as shape-mismatched, never hidden. With ``graft.verify_with``, the source architecture
holding the source weights and the grafted model run side by side; a difference beyond the
tolerance stops the run (:class:`~torchgraft.errors.VerificationError`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from ..errors import VerificationError
from ..grafting.api import graft
from ..grafting.graft_plan import GraftReport
from ..grafting.verify import Verification, verify_graft
from ..model.anatomy import spec_of
from ..model.heads import replace_head
from ..model.spec import ModelSpec
from ..model.stem import replace_input_channels
from ..policies.initializers import InitSummary, init_new_layers
from ..zoo import build_model
from ..zoo.grafts import identified_architecture, resolve_source_model
from .config.load import RunConfig

__all__ = ["ModelSetup", "build_document", "build_run_model"]


@dataclass
class ModelSetup:
    """The model of a run and how it came to be.

    Attributes:
        model: the model, weights loaded, head replaced.
        spec: its spec (classes recorded).
        build: what :func:`~torchgraft.engine.artifacts.build_architecture` needs to rebuild it.
        report: the graft report (None without pretrained weights).
        verification: the comparison with the source architecture, when one ran.
        init: what was initialised (the keys the graft did not load).
    """

    model: nn.Module
    spec: ModelSpec
    build: dict[str, Any]
    report: GraftReport | None = None
    verification: Verification | None = None
    init: InitSummary | None = None


def build_document(config: RunConfig, num_classes: int) -> dict[str, Any]:
    """The ``build`` record of model.json: enough to rebuild the architecture."""
    return {
        "model": config.model.name,
        "kwargs": dict(config.model.kwargs),
        "in_chans": config.model.in_chans,
        "num_classes": num_classes,
        "head": {"dropout": config.head.dropout, "hidden": config.head.hidden},
    }


def build_run_model(config: RunConfig, classes: tuple[str, ...]) -> ModelSetup:
    """Build the run's model for ``classes`` as the config says.

    Raises:
        SpecError / GraftError / CheckpointError: the model or weights cannot be had as asked.
        VerificationError: the graft changed the function of the source model.
    """
    num_classes = config.head.num_classes or len(classes)
    read_options = {"ema": config.weights.ema, "allow_globals": config.weights.allow_globals}
    built = build_model(
        config.model.name,
        weights=config.weights.source,
        read_options=read_options,
        **config.model.kwargs,
    )
    model = built.model
    if config.model.in_chans and config.model.in_chans != built.spec.in_chans:
        replace_input_channels(model, config.model.in_chans)
    source_classes = spec_of(model).classes
    replace_head(
        model,
        num_classes,
        classes=classes if num_classes == len(classes) else None,
        dropout=config.head.dropout or 0.0,
        hidden=config.head.hidden,
    )
    setup = ModelSetup(model, spec_of(model), build_document(config, num_classes))
    if built.source is not None:
        setup.report, setup.verification = _graft(config, model, built, source_classes)
    missing = setup.report.missing if setup.report is not None else []
    if missing and config.head.init != "keep":
        setup.init = init_new_layers(model, missing, config.head.init)
    return setup


def _graft(config: RunConfig, model: nn.Module, built, source_classes):
    source_model = resolve_source_model(config.graft.verify_with)
    report = graft(
        model,
        built.source,
        strategy=config.graft.strategy,
        rules=config.graft.rules,
        min_coverage=config.graft.min_coverage,
        source_name=built.source_name,
        source_classes=source_classes if config.head.keep_classes else None,
        keep_classes=config.head.keep_classes,
        source_model=source_model,
        allow_partial=config.graft.allow_partial,
        allow_uncertain=config.graft.allow_uncertain,
        identify=identified_architecture,
    )
    verification = None
    if source_model is not None:
        verification = verify_graft(
            model,
            source_model,
            built.source,
            tolerance=config.graft.tolerance,
            source_name=config.graft.verify_with,
        )
        report.verification = verification.to_dict()
        report.notes.append(str(verification))
        if not verification.ok:
            raise VerificationError(
                f"{verification}. The grafted model does not compute what "
                f"{config.graft.verify_with} computes with these weights; refusing to train on it "
                "(check the model name, or drop graft.verify_with to accept it knowingly)"
            )
    return report, verification
