"""``tg.fit(config)``: what ``torchgraft train`` runs, top to bottom.

config (validated) → data source (classes) → model (build, head, graft, verify, init) →
runtime (device, precision, threads) → data (decoded or scanned, preprocessing from the
model's spec) → session (stages, optimizer, scheduler) → epochs (train, validate, save the
best model, save the resume state, then the metrics rows) → test split, plots, final table.

``resume=RUN_DIR`` reads the run's own ``config.yaml`` (overrides may extend it, e.g. more
epochs), rebuilds the architecture from the saved record, restores the last complete epoch's
state and continues: the final weights are bitwise those of an uninterrupted run (CPU).
A changed model, class list or dataset is refused with the difference.
"""

from __future__ import annotations

import dataclasses
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..data.prepare import PreparedData, prepare_data
from ..data.scan import write_bad_list
from ..data.sources import discover
from ..data.transforms import resolve_preprocessing
from ..errors import ConfigError
from ..grafting.api import graft
from ..model.spec import attach_spec
from ..wording import in_cli, option, renamed
from .artifacts import build_architecture, read_model_document, save_model
from .config import CONFIG_OPTIONS, RunConfig, load_config
from .console import RunConsole
from .outputs import final_rows, graft_lines, write_plots
from .run_dir import RunDirectory, writing_into
from .runtime import resolve_runtime
from .session import Session
from .setup import ModelSetup, build_document, build_run_model
from .state import clean_temporaries, load_state, save_state

__all__ = ["Run", "fit"]


@dataclass(repr=False)
class Run:
    """The outcome of :func:`fit`.

    Attributes:
        dir: the run directory (``tg.load(run.dir)`` gives the best model back).
        best: the best epoch's validation metrics, with ``epoch`` (0-based).
        history: every metrics row (one per epoch and split).
        test: metrics of the best model on the test split, when the data has one.
        model: the model in memory at the end of training (the last epoch's weights).
        seconds: wall time of the training part.
    """

    dir: Path
    best: dict[str, Any]
    history: list[dict[str, Any]]
    test: dict[str, Any] | None = None
    model: nn.Module | None = field(default=None, repr=False)
    seconds: float = 0.0

    def __repr__(self) -> str:
        # The history holds a row per epoch and split: the REPL shows the outcome instead.
        epochs = len({row.get("epoch") for row in self.history})
        scores = ", ".join(
            f"{key} {value:.4g}"
            for key, value in self.best.items()
            if key in ("acc1", "loss") and isinstance(value, (int, float))
        )
        best = f"best epoch {self.best.get('epoch')}" + (f" ({scores})" if scores else "")
        return f"<Run {self.dir}: {best}, {epochs} epochs in {self.seconds:.0f} s>"


def fit(
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    resume: str | Path | None = None,
    console: RunConsole | None = None,
) -> Run:
    """Train as ``config`` says (None: the embedded default) and leave a run directory.

    Args:
        config: a :class:`RunConfig`, a mapping of sections, a YAML file, or None.
        overrides: dotted overrides (``["--train.epochs", "1"]`` or ``{"train.epochs": 1}``).
        resume: a run directory to continue from its last complete epoch (its own config is
            used; ``config`` must then be None).
        console: where progress goes (default: stdout).

    Returns:
        A :class:`Run`.

    Raises:
        ConfigError, DataError, SpecError, GraftError, CheckpointError: bad input.
        VerificationError: the graft changed what the source model computes.
        TrainingError: the loss became non-finite.

    Example:
        >>> run = tg.fit({"data": {"source": "photos/"}, "train": {"epochs": 5}})
        >>> model = tg.load(run.dir)
    """
    # Inside a run, options are config keys: a graft that falls short says graft.min_coverage.
    with renamed(CONFIG_OPTIONS):
        return _fit(config, overrides, resume, console or RunConsole())


def _fit(config, overrides, resume, console: RunConsole) -> Run:
    config, run_dir, state = _open(config, overrides, resume)
    _seed(config.train.seed)
    source = discover(
        config.data.source, val_fraction=config.data.val_fraction, split_seed=config.data.split_seed
    )
    setup = _model(config, source.classes, state, run_dir)
    runtime = resolve_runtime(
        setup.model,
        device=config.train.device,
        precision=config.train.precision,
        threads=config.train.threads,
        channels_last=config.model.channels_last,
    )
    setup.model.to(runtime.device, memory_format=runtime.memory_format)
    data = _data(config, setup, source)
    if state is not None:
        _check_same_run(state, config, setup, data)
    with writing_into(run_dir.path, resumable=state is not None):
        _write_start(run_dir, config, setup, data, source.summary(), console, resumed=bool(state))
    session = Session(config, setup.model, setup.spec, runtime, data)
    first = session.begin(state)
    console.line(
        f"runtime: {runtime.describe()}; data {'in memory' if data.in_memory else 'streamed'}"
    )
    started = time.perf_counter()
    try:
        _epochs(config, setup, data, session, run_dir, console, first)
    except KeyboardInterrupt:
        console.stop_progress()
        again = option("resume", str(run_dir.path))
        console.line(
            "interrupted; continue with: "
            + (f"torchgraft train {again}" if in_cli() else f"tg.fit({again})")
        )
        raise
    return _finish(config, run_dir, session, console, time.perf_counter() - started)


def _epochs(config, setup, data, session: Session, run_dir: RunDirectory, console, first: int):
    """Train the epochs from ``first``; after each, save as :func:`_checkpoint_after` says."""
    best = None  # the best weights not yet written (cached epochs write at their stage's end)
    for epoch in range(first, config.train.epochs):
        result = session.run_epoch(epoch, console)
        if result.improved:
            best = _snapshot(session.evaluation_model())
        stop = session.should_stop()
        if stop or _checkpoint_after(session, result, epoch):
            with writing_into(run_dir.path, resumable=True):
                if best is not None:
                    save_model(run_dir.path, best, _model_document(config, setup, data, session))
                    best = None
                fingerprint = _fingerprint(setup, data)
                state = {**session.state(epoch), "fingerprint": fingerprint}
                save_state(run_dir.path, epoch, state)
                run_dir.write_metrics(session.history)
                run_dir.write_json("policy.json", session.policies)
        console.end_epoch(_epoch_line(result))
        for note in result.notes:
            console.line(note)
        if stop:
            console.line(
                f"early stopping: no improvement of {config.train.monitor} for {session.stale} epochs"
            )
            break


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _checkpoint_after(session: Session, result, epoch: int) -> bool:
    """Save the resume state (and the rows, and the best model) after this epoch?

    Always, except inside a run of cached epochs: one costs a fraction of a second (less than
    its checkpoint) and is redone exactly after a kill, so those are saved at the end of
    their stage.
    """
    last = epoch + 1 >= session.config.train.epochs
    stage_ends = last or session.stages.trainable(epoch + 1) != session.stages.trainable(epoch)
    return not result.cached or stage_ends


def _open(config, overrides, resume) -> tuple[RunConfig, RunDirectory, dict[str, Any] | None]:
    if resume is None:
        config = load_config(config, overrides)
        with writing_into(Path(config.output.dir), resumable=False):
            directory = RunDirectory.create(
                config.output.dir, config.output.name, config.model.name
            )
        return config, directory, None
    if config is not None:
        raise ConfigError(
            f"{option('resume')} continues a run with its own config.yaml; pass overrides only"
        )
    directory = RunDirectory(Path(resume))
    saved = directory.file("config.yaml")
    if not saved.is_file():
        raise ConfigError(
            f"{resume}: not a run directory (no config.yaml); give the folder train created"
        )
    clean_temporaries(directory.path)
    config = load_config(saved, overrides)
    state = load_state(directory.path)
    if (directory.path / "model.safetensors").exists():
        # The best model is kept unless the resumed epochs beat it: a damaged file would
        # otherwise end the run as its result, unread and unchecked.
        read_model_document(directory.path)
    return config, directory, state


def _seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _model(config: RunConfig, classes, state, run_dir: RunDirectory) -> ModelSetup:
    if state is None:
        return build_run_model(config, classes)
    # Resuming: the architecture from the saved record, the weights from the saved state —
    # the pretrained source is not needed any more.
    build = state["fingerprint"]["build"]
    model = build_architecture(build, tuple(classes))
    report = graft(model, state["model"], strategy="exact", source_name=f"{run_dir.path}/state")
    return ModelSetup(model, model.torchgraft_spec, build, report)


def _data(config: RunConfig, setup: ModelSetup, source) -> PreparedData:
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


def _fingerprint(setup: ModelSetup, data: PreparedData) -> dict[str, Any]:
    return {
        "build": setup.build,
        "classes": list(data.classes),
        "data": data.source.fingerprint(),
        "keys": {k: list(v.shape) for k, v in setup.model.state_dict().items()},
    }


def _check_same_run(
    state: dict[str, Any], config: RunConfig, setup: ModelSetup, data: PreparedData
) -> None:
    """Refuse to resume when the model, the classes or the data differ from the saved run."""
    saved, now = state["fingerprint"], _fingerprint(setup, data)
    differences = []
    asked = build_document(config, config.head.num_classes or len(data.classes))
    changed = [k for k in asked if asked[k] != saved["build"].get(k)]
    if changed:
        differences += [
            f"model {k} was {saved['build'].get(k)!r}, now {asked[k]!r}" for k in changed
        ]
    if saved["classes"] != now["classes"]:
        differences.append(f"classes were {saved['classes']}, now {now['classes']}")
    if saved["data"] != now["data"]:
        differences.append("the dataset changed (files added, removed, relabelled or resized)")
    if saved["keys"] != now["keys"]:
        differences.append("the model's tensors changed")
    if differences:
        raise ConfigError(
            "cannot resume exactly: " + "; ".join(differences) + "; start a new run instead"
        )


def _write_start(run_dir, config, setup, data, summary, console, *, resumed) -> None:
    run_dir.write_text("config.yaml", config.to_yaml())  # on resume: with the overrides used
    if not resumed:
        if setup.report is not None:
            run_dir.write_json("graft.json", setup.report.to_dict())
        if data.bad:
            write_bad_list(data.bad, run_dir.file("bad_images.txt"))
    console.rule(f"torchgraft train → {run_dir.path}" + (" (resumed)" if resumed else ""))
    console.line(f"model: {config.model.name} · data {summary}")
    for line in graft_lines(setup.report, setup.verification, resumed=resumed):
        console.line(line)
    if data.bad:
        console.line(f"skipped {len(data.bad)} unreadable image file(s); listed in bad_images.txt")


def _model_document(
    config: RunConfig, setup: ModelSetup, data: PreparedData, session: Session
) -> dict[str, Any]:
    spec = dataclasses.replace(
        setup.spec, classes=tuple(data.classes), num_classes=len(data.classes)
    )
    return {
        "spec": spec.to_dict(),
        "build": setup.build,
        "classes": list(data.classes),
        "preprocessing": dataclasses.asdict(data.preprocessing),
        "metrics": session.best.get("metrics"),
        "epoch": session.best.get("epoch"),
        "ema": config.train.ema is not None,
    }


def _epoch_line(result) -> str:
    train, val = result.rows
    marker = " *" if result.improved else ""
    cached = " (cached features)" if result.cached else ""
    return (
        f"epoch {result.epoch + 1}: train loss {train['loss']:.4f} acc {train['acc1']:.2%} · "
        f"val loss {val['loss']:.4f} acc {val['acc1']:.2%} · {result.seconds:.1f}s{cached}{marker}"
    )


def _finish(config, run_dir: RunDirectory, session: Session, console, seconds: float) -> Run:
    test = None
    if "test" in session.data.source.splits and run_dir.file("model.safetensors").exists():
        from .artifacts import load

        best = load(run_dir.path).to(
            session.runtime.device, memory_format=session.runtime.memory_format
        )
        test = session.evaluate("test", model=best).to_dict()
    with writing_into(run_dir.path):
        if test is not None:
            run_dir.write_json("test_metrics.json", test)
        if config.output.plots:
            write_plots(run_dir.path, session)
    console.table("result", ("", ""), final_rows(session, test, seconds, run_dir.path))
    return Run(
        run_dir.path,
        {**session.best.get("metrics", {}), "epoch": session.best.get("epoch")},
        session.history,
        test,
        session.model,
        seconds,
    )
