"""A run set up to its first epoch — what ``train`` and ``lr-find`` share, in one place:
seed, data source, model, runtime, data, the batches checked, the session (:func:`start_run`).

The model (:func:`build_run_model`) takes the same road as :func:`torchgraft.create_model`, with the run's head options and the proof
the config asks for: the architecture is built with its native head, the head replaced for
the run's classes, and the pretrained weights grafted in — so the old head shows up in the
report as shape-mismatched, never hidden. With ``graft.verify_with``, the source architecture
holding the source weights and the grafted model run side by side; a difference beyond the
tolerance stops the run (:class:`~torchgraft.errors.VerificationError`). A resumed run
rebuilds the architecture from its saved record and takes the weights of its resume state
(:func:`rebuilt_model`): the pretrained source is not needed any more.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..adapters import AdapterSummary, add_adapters, plain_names, recreate_adapters
from ..data.defaults import (
    DataChoice,
    choose_augment,
    choose_batch_size,
    choose_image_size,
    held_out_note,
    measure_sides,
)
from ..data.prepare import PreparedData, prepare_data
from ..data.sources import discover
from ..data.transforms import resolve_preprocessing
from ..errors import ConfigError, DataError, VerificationError
from ..grafting.api import graft
from ..grafting.graft_plan import GraftReport
from ..grafting.verify import Verification, verify_graft
from ..model.anatomy import spec_of
from ..model.build_record import Trust, check_recorded_build
from ..model.heads import replace_head
from ..model.passes import evaluating
from ..model.spec import ModelSpec, attach_spec
from ..model.stem import replace_input_channels
from ..policies.initializers import InitSummary, init_new_layers
from ..zoo import build_model
from ..zoo.grafts import identified_architecture, resolve_source_model
from .artifacts import build_architecture, build_document
from .batch_memory import check_run_batches
from .config.load import RunConfig
from .distributed import ALONE, Processes, rank_device
from .runtime import resolve_runtime, runtime_decisions
from .session import Session

__all__ = [
    "ModelSetup",
    "RunStart",
    "build_document",
    "build_run_model",
    "choose_data_settings",
    "discover_run_source",
    "prepare_run_data",
    "rebuilt_model",
    "seed_everything",
    "start_run",
]


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
        adapters: the LoRA/DoRA adapters added (``peft``), or None.
    """

    model: nn.Module
    spec: ModelSpec
    build: dict[str, Any]
    report: GraftReport | None = None
    verification: Verification | None = None
    init: InitSummary | None = None
    adapters: AdapterSummary | None = None


@dataclass
class RunStart:
    """A run at its first epoch: the data source as trained on (bad files left out when
    skipped, so its counts are the images used), the model and how it came to be, the
    prepared data, the session (not begun: a resume state is restored by its
    :meth:`~.session.Session.begin`), and the notes to print (stray files skipped, settings
    chosen, batches clamped)."""

    source: Any
    setup: ModelSetup
    data: PreparedData
    session: Session
    notes: list[str]


def start_run(
    config: RunConfig,
    processes: Processes = ALONE,
    *,
    state: dict[str, Any] | None = None,
    run_dir: Path | None = None,
    trusted: Trust = True,
    progress: Any = None,
) -> RunStart:
    """Set a run up to its first epoch, in the order every run takes: seed, data source
    (classes), model (built, or rebuilt from ``state`` of ``run_dir``), BatchNorm
    synchronised across ``processes``, runtime, data, batches checked, session.

    Raises:
        ConfigError, DataError, SpecError, GraftError, CheckpointError: bad input.
        UntrustedRunError: ``state`` names a builder that is not ``trusted``.
        VerificationError: the graft changed the function of the source model.
    """
    seed_everything(config.train.seed)
    source = discover_run_source(config)
    if state is None:
        setup = build_run_model(config, source.classes, progress)
    else:
        setup = rebuilt_model(state, source.classes, run_dir, trusted)
    _synchronise_batchnorm(config, setup, processes)
    runtime = resolve_runtime(
        setup.model,
        device=rank_device(config.train.device, processes),
        precision=config.train.precision,
        threads=config.train.threads,
        channels_last=config.model.channels_last,
    )
    setup.model.to(runtime.device, memory_format=runtime.memory_format)
    if processes.rank:
        # Same model on every process (the seed above); from here on each process draws
        # its own augmentations and dropout. Rank 0 continues the one-process stream.
        seed_everything(config.train.seed + 1_000_003 * processes.rank)
    chosen = choose_data_settings(config, setup, source, processes)
    data = prepare_run_data(config, setup, source)
    # Before a batch exists: clamped to the split (said), refused when it cannot fit.
    notes = source.strays.lines()
    notes += [choice.line() for choice in chosen if not choice.given]
    notes += check_run_batches(config, setup.model, data, runtime, processes)
    session = Session(config, setup.model, setup.spec, runtime, data, processes)
    session.decisions += [choice.to_dict() for choice in chosen]
    session.decisions += runtime_decisions(runtime, config.train, config.model.channels_last)
    return RunStart(data.source, setup, data, session, notes)


def choose_data_settings(
    config: RunConfig, setup: ModelSetup, source, processes: Processes = ALONE
) -> list[DataChoice]:
    """The ``data`` settings the config leaves unset (None), chosen from the training images
    and the model (:mod:`torchgraft.data.defaults`) and written into ``config`` (so that
    ``config.yaml`` records them); the ones it sets, kept. Each with its reason."""
    settings = config.data
    train = source.splits["train"]
    model_pre = setup.spec.preprocessing
    if settings.image_size is None:
        runs_at = functools.partial(_runs_at, setup.model, model_pre.input_size[0])
        size, crop = choose_image_size(measure_sides(train), model_pre, runs_at=runs_at)
        if settings.crop_pct is not None:
            crop = DataChoice("data.crop_pct", settings.crop_pct, "given", given=True)
    else:
        size = DataChoice("data.image_size", settings.image_size, "given", given=True)
        crop = DataChoice(
            "data.crop_pct",
            model_pre.crop_pct if settings.crop_pct is None else settings.crop_pct,
            "the model's own crop" if settings.crop_pct is None else "given",
            given=True,
        )
    if settings.batch_size is None:
        batch = choose_batch_size(len(train), processes.world)
    else:
        batch = DataChoice("data.batch_size", settings.batch_size, "given", given=True)
    if settings.augment is None:
        augment = choose_augment(train.labels, hflip=settings.hflip)
    else:
        augment = DataChoice("data.augment", settings.augment, "given", given=True)
    settings.image_size, settings.crop_pct = size.value, crop.value
    settings.batch_size, settings.augment = batch.value, augment.value
    chosen = [size, crop, batch, augment]
    if source.val_held_out:
        chosen.append(held_out_note(settings.val_fraction, settings.split_seed, source.origin))
    return chosen


def _runs_at(model: nn.Module, channels: int, side: int) -> bool:
    """Whether ``model`` takes one ``side × side`` image (a forward pass in eval mode, no
    gradient, modes and RNG untouched); a model built for one size fails here."""
    parameter = next(model.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    try:
        with evaluating(model):
            model(torch.zeros(1, channels, side, side, device=device))
    except (RuntimeError, ValueError, AssertionError, IndexError):
        return False
    return True


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (what a run does before building its model)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def discover_run_source(config: RunConfig):
    """The run's dataset as ``data.*`` names it; its index within ``data.memory_limit_mb``."""
    data = config.data
    source = discover(
        data.source,
        val_fraction=data.val_fraction,
        split_seed=data.split_seed,
        memory_limit_mb=data.memory_limit_mb,
    )
    for split in ("train", "val"):
        if not len(source.splits.get(split, ())):
            raise DataError(
                f"{data.source}: the {split} split holds no images ({source.summary()}); a run "
                "needs images to train on and to validate with: add images (two or more per "
                "class when the validation split is taken from them, data.val_fraction)"
            )
    return source


def prepare_run_data(config: RunConfig, setup: ModelSetup, source) -> PreparedData:
    """The run's data: ``data.*`` settings over the model's preprocessing (which is attached
    to the model), decoded or scanned as ``data.in_memory`` says."""
    settings = config.data
    pre = resolve_preprocessing(
        setup.spec.preprocessing,
        image_size=settings.image_size,
        crop_pct=settings.crop_pct,
        interpolation=settings.interpolation,
        mean=settings.mean,
        std=settings.std,
    )
    attach_spec(setup.model, dataclasses.replace(setup.spec, preprocessing=pre))
    setup.spec = setup.model.torchgraft_spec
    return prepare_data(
        source,
        pre,
        in_memory=settings.in_memory,
        memory_limit_mb=settings.memory_limit_mb,
        on_bad_image=settings.on_bad_image,
        workers=2 if settings.workers == "auto" else settings.workers,
    )


def rebuilt_model(
    state: dict[str, Any], classes: tuple[str, ...], run_dir: Path | None, trusted: Trust
) -> ModelSetup:
    """A resumed run's model: the architecture from the state's saved record (a builder read
    from a file: torchvision/timm, or ``trusted``), the weights from the state."""
    origin = f"{run_dir}/state: fingerprint"
    build = check_recorded_build(state["fingerprint"]["build"], origin, trust_run=trusted)
    record = state["fingerprint"].get("adapters")  # plain data, checked field by field
    names = plain_names(state["model"], record) if record is not None else {}
    expected = {
        names.get(k, k): tuple(v.shape) for k, v in state["model"].items() if names.get(k, k)
    }
    model = build_architecture(build, tuple(classes), expected=expected)
    adapters = recreate_adapters(model, record) if record is not None else None
    report = graft(model, state["model"], strategy="exact", source_name=f"{run_dir}/state")
    return ModelSetup(model, model.torchgraft_spec, build, report, adapters=adapters)


def _synchronise_batchnorm(config: RunConfig, setup: ModelSetup, processes: Processes) -> None:
    """``train.sync_bn``: BatchNorm layers become SyncBatchNorm before any freezing policy
    pins them (the conversion builds new modules; see torchgraft.policies.freezing).
    timm's converter also keeps the activation of its BatchNormAct layers, which torch's
    own ``convert_sync_batchnorm`` silently drops."""
    if processes.alone or not config.train.sync_bn:
        return
    from timm.layers import convert_sync_batchnorm

    spec = setup.model.torchgraft_spec
    setup.model = convert_sync_batchnorm(setup.model)
    attach_spec(setup.model, spec)


def build_run_model(config: RunConfig, classes: tuple[str, ...], progress=None) -> ModelSetup:
    """Build the run's model for ``classes`` as the config says; the verification of its
    graft shows a progress bar on ``progress`` (a :class:`~.console.RunConsole`), if given.

    Raises:
        ConfigError: ``head.num_classes`` is below the number of ``classes``.
        SpecError / GraftError / CheckpointError: the model or weights cannot be had as asked.
        VerificationError: the graft changed the function of the source model.
    """
    num_classes = config.head.num_classes or len(classes)
    if num_classes < len(classes):  # else the first batch fails on a label past the head
        raise ConfigError(
            f"head.num_classes {num_classes}: the data has {len(classes)} classes; set it to "
            f"at least {len(classes)}, or leave it out to count them"
        )
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
        setup.report, setup.verification = _graft(config, model, built, source_classes, progress)
    missing = setup.report.missing if setup.report is not None else []
    if missing and config.head.init != "keep":
        setup.init = init_new_layers(model, missing, config.head.init)
    if config.peft.enabled:  # beside the weights as grafted, the new head trains fully
        peft = config.peft
        setup.adapters = add_adapters(
            model,
            method=peft.method,
            rank=peft.rank,
            alpha=peft.alpha,
            dropout=peft.dropout,
            targets=peft.targets,
            spec=setup.spec,
        )
    return setup


def _graft(config: RunConfig, model: nn.Module, built, source_classes, progress=None):
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
        # graft.verify_with is verified below, with progress; an identified source
        # architecture is run by the graft itself, before loading
        verify=source_model is None,
        tolerance=config.graft.tolerance,
    )
    verification = None
    if source_model is not None:
        shown = (
            contextlib.nullcontext()
            if progress is None
            else progress.task(f"verify against {config.graft.verify_with}")
        )
        with shown as on_step:
            verification = verify_graft(
                model,
                source_model,
                built.source,
                tolerance=config.graft.tolerance,
                source_name=config.graft.verify_with,
                on_step=on_step,
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
