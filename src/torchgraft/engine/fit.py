"""``tg.fit(config)``: what ``torchgraft train`` runs, top to bottom.

config (validated) → data source (classes) → model (build, head, graft, verify, init) →
runtime (device, precision, threads) → data (decoded or scanned, preprocessing from the
model's spec) → session (stages, optimizer, scheduler) → epochs (train, validate, save the
best model, save the resume state, then the metrics rows) → test split, plots, final table.

``resume=RUN_DIR`` reads the run's own ``config.yaml`` (overrides may extend it, e.g. more
epochs), rebuilds the architecture from the saved record, restores the last complete epoch's
state and continues: the final weights are bitwise those of an uninterrupted run (CPU).
A changed model, class list or dataset is refused with the difference.

Under ``torchrun`` every process runs this same function (:mod:`.distributed`): rank 0
creates the run directory, reads what a resume needs and hands it to the others, writes every
file and prints; all of them train their share, check at every checkpoint that their weights
are still identical, and wait for rank 0's writes at a barrier. When torchrun restarts the
workers (``--max-restarts``), the run continues from its last complete epoch by itself.
"""

from __future__ import annotations

import dataclasses
import os
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint.documents import DocumentLimits, read_json
from ..data.prepare import PreparedData, prepare_data
from ..data.scan import write_bad_list
from ..data.sources import discover
from ..data.transforms import resolve_preprocessing
from ..errors import CheckpointError, ConfigError, DataError, TorchgraftError, TrainingError
from ..grafting.api import graft
from ..model.build_record import Trust, check_recorded_build, check_recorded_builder
from ..model.spec import attach_spec
from ..wording import in_cli, option, renamed
from .artifacts import build_architecture, read_model_document, save_model
from .batch_memory import check_run_batches
from .config.load import CONFIG_OPTIONS, RunConfig, load_config, parse_overrides
from .console import RunConsole
from .distributed import (
    Processes,
    join,
    launched_by_torchrun,
    rank_device,
    torchrun_restart,
    torchrun_run_id,
)
from .replicas import check_replicas_agree
from .report.summary import final_rows, graft_lines, write_plots
from .report.write import write_report
from .resume import clean_temporaries, load_state, save_state, state_epoch, state_file
from .run_dir import RunDirectory, writing_into
from .runtime import resolve_runtime
from .session import Session
from .setup import ModelSetup, build_document, build_run_model

__all__ = ["Run", "discover_run_source", "fit", "prepare_run_data", "seed_everything"]

#: torchrun.json is a few lines.
_RECORD_LIMITS = DocumentLimits(max_bytes=64 * 1024, max_depth=4)


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
    trust_run: bool = False,
) -> Run:
    """Train as ``config`` says (None: the embedded default) and leave a run directory.

    Args:
        config: a :class:`RunConfig`, a mapping of sections, a YAML file, or None.
        overrides: dotted overrides (``["--train.epochs", "1"]`` or ``{"train.epochs": 1}``).
        resume: a run directory to continue from its last complete epoch (its own config is
            used; ``config`` must then be None).
        console: where progress goes (default: stdout).
        trust_run: with ``resume``, rebuild a model whose saved record names a
            ``package.module:callable`` builder (that code runs). The run directory is read
            from files, and a file never selects code on its own: torchvision and timm models
            need no opt-in.

    Returns:
        A :class:`Run`.

    Raises:
        ConfigError, DataError, SpecError, GraftError, CheckpointError: bad input.
        UntrustedRunError: resuming a run whose builder is not torchvision/timm without
            ``trust_run``.
        VerificationError: the graft changed what the source model computes.
        TrainingError: the loss became non-finite.

    Example:
        >>> run = tg.fit({"data": {"source": "photos/"}, "train": {"epochs": 5}})
        >>> model = tg.load(run.dir)
    """
    # Inside a run, options are config keys: a graft that falls short says graft.min_coverage.
    with renamed(CONFIG_OPTIONS):
        return _fit(config, overrides, resume, console or RunConsole(), trust_run)


def _fit(config, overrides, resume, console: RunConsole, trust_run: bool) -> Run:
    if resume is None:
        config = load_config(config, overrides)  # every process checks its own command line
        device = config.train.device
    else:
        if config is not None:
            raise ConfigError(
                f"{option('resume')} continues a run with its own config.yaml; pass overrides only"
            )
        device = _overridden(overrides, "train.device") or "auto"
    processes = join(device)
    try:
        return _fit_process(config, overrides, resume, console, processes, trust_run)
    except RuntimeError as exc:
        if processes.alone or not _lost_peer(exc):
            raise
        raise TrainingError(
            f"lost contact with another process of the run ({_first_line(exc)}); it failed or "
            "was stopped (its own error is above). torchrun --max-restarts N resumes the run "
            "from its last complete epoch; otherwise continue it with "
            "torchrun … -m torchgraft train --resume RUN_DIR"
        ) from exc
    finally:
        processes.leave()


def _lost_peer(exc: RuntimeError) -> bool:
    """A collective failed because a peer process is gone (not a bug of this process)."""
    import torch.distributed as dist

    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return any(
        marker in text
        for marker in ("Connection reset", "Connection closed", "Connection refused", "gloo/")
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _fit_process(
    config, overrides, resume, console: RunConsole, processes: Processes, trust_run: bool
) -> Run:
    if not processes.main:
        console = RunConsole(quiet=True)  # one process speaks for the run
    # What the caller named in this call is trusted; a builder read from a run's files only
    # with the opt-in (torchgraft.model.build_record).
    trusted = True if trust_run else ({config.model.name} if config is not None else set())
    if config is not None:
        _check_processes(config, processes)  # before a run folder is made
    config, run_dir, state = _open(config, overrides, resume, processes, trusted)
    _check_processes(config, processes)  # a resumed run's own configuration
    seed_everything(config.train.seed)
    source = discover_run_source(config)
    setup = _model(config, source.classes, state, run_dir, trusted)
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
    data = prepare_run_data(config, setup, source)
    # Before a batch exists: clamped to the split (said), refused when it cannot fit.
    notes = check_run_batches(config, setup.model, data, runtime, processes)
    if state is not None:
        _check_same_run(state, config, setup, data)
    if processes.main:
        with writing_into(run_dir.path, resumable=state is not None):
            _write_start(
                run_dir, config, setup, data, source.summary(), console, resumed=bool(state)
            )
    for note in notes:
        console.line(note)
    session = Session(config, setup.model, setup.spec, runtime, data, processes)
    first = session.begin(state, origin=str(state_file(run_dir.path)))
    console.line(
        f"runtime: {runtime.describe()}; data {'in memory' if data.in_memory else 'streamed'}"
        + (
            ""
            if processes.alone
            else f"; {processes.describe()}, global batch {config.data.batch_size}"
        )
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
    # The run's own builder, which this process built and trained: its record may be read back.
    own = trusted if trusted is True else {*trusted, setup.build["model"]}
    return _finish(config, run_dir, session, console, time.perf_counter() - started, own)


def _epochs(config, setup, data, session: Session, run_dir: RunDirectory, console, first: int):
    """Train the epochs from ``first``; after each, save as :func:`_checkpoint_after` says.
    With several processes all of them run this; rank 0 writes while the others wait."""
    processes = session.processes
    best = None  # the best weights not yet written (cached epochs write at their stage's end)
    for epoch in range(first, config.train.epochs):
        result = session.run_epoch(epoch, console)
        if result.improved and processes.main:
            best = _snapshot(session.evaluation_model())
        stop = session.should_stop()
        if stop or _checkpoint_after(session, result, epoch):
            state = session.state(epoch)  # every process: their random streams are gathered
            check_replicas_agree(session.model, processes, epoch)
            if processes.main:
                with writing_into(run_dir.path, resumable=True):
                    if best is not None:
                        document = _model_document(config, setup, data, session)
                        save_model(run_dir.path, best, document)
                        best = None
                    fingerprint = _fingerprint(setup, data)
                    save_state(run_dir.path, epoch, {**state, "fingerprint": fingerprint})
                    run_dir.write_metrics(session.history)
                    run_dir.write_json("policy.json", session.policies)
                    write_report(run_dir.path, final=False)  # cheap: no pass over the data
            processes.barrier()  # a process killed from here on resumes after this epoch
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


def _overridden(overrides, key: str) -> Any:
    """The value an override sets for ``key`` (dotted), or None."""
    if isinstance(overrides, Mapping):
        return overrides.get(key)
    return parse_overrides(overrides).get(key)


def _open(
    config, overrides, resume, processes: Processes, trusted: Trust
) -> tuple[RunConfig, RunDirectory, dict[str, Any] | None]:
    """The run's configuration, directory and (when resuming) state, on every process.

    Rank 0 creates or reads the directory; the others get what they need from it through
    the process group (they may not see its disk). A torchrun restart finds the folder of
    the attempt that failed and resumes it (or starts afresh in it before its first epoch).
    """
    if resume is None:
        earlier = processes.broadcast(_earlier_attempt(config) if processes.main else None)
        if earlier is not None and earlier[1]:
            resume, config = earlier[0], None
        elif earlier is not None:
            return config, RunDirectory(Path(earlier[0])), None
    if resume is None:
        path = None
        if processes.main:
            with writing_into(Path(config.output.dir), resumable=False):
                directory = RunDirectory.create(
                    config.output.dir, config.output.name, config.model.name
                )
                if launched_by_torchrun():
                    directory.write_json("torchrun.json", _torchrun_record(processes))
            path = directory.path
        return config, RunDirectory(processes.broadcast(path)), None
    if processes.alone:
        return _read_run(resume, overrides, trusted)
    result = processes.broadcast(
        _attempt(_read_run, resume, overrides, trusted) if processes.main else None
    )
    if isinstance(result, BaseException):
        raise result
    return result


def _attempt(function, *args):
    """``function(*args)``, or the user-facing error it raised (handed to every process)."""
    try:
        return function(*args)
    except TorchgraftError as exc:
        return exc


def _torchrun_record(processes: Processes) -> dict[str, Any]:
    return {"run_id": torchrun_run_id(), "world": processes.world, "restart": torchrun_restart()}


def _earlier_attempt(config: RunConfig) -> tuple[str, bool] | None:
    """After a torchrun restart: the run folder the failed attempt of this launch created
    (the newest whose torchrun.json has this rendezvous id) and whether it holds a complete
    epoch to resume from."""
    run_id = torchrun_run_id()
    if torchrun_restart() == 0 or not run_id:
        return None
    found = []
    for record in Path(config.output.dir).glob("*/torchrun.json"):
        try:
            same = read_json(record, CheckpointError, _RECORD_LIMITS).get("run_id") == run_id
        except (CheckpointError, AttributeError):
            continue
        if same:
            found.append(record.parent)
    if not found:
        return None
    folder = max(found, key=lambda path: path.stat().st_mtime)
    return str(folder), state_epoch(folder) is not None


def _read_run(resume, overrides, trusted: Trust) -> tuple[RunConfig, RunDirectory, dict[str, Any]]:
    """A run directory to continue: its config.yaml (with ``overrides``), its resume state and
    its best model's record, each read as data (the files may be a stranger's): the model is
    named by a file, so it must be a torchvision/timm model or ``trusted``."""
    directory = RunDirectory(Path(resume))
    saved = directory.file("config.yaml")
    if not os.path.lexists(saved):
        raise ConfigError(
            f"{resume}: not a run directory (no config.yaml); give the folder train created"
        )
    clean_temporaries(directory.path)
    # Model names are checked against the saved state below, not imported to be checked.
    config = load_config(saved, overrides, check_names=False)
    check_recorded_builder(config.model.name, f"{saved}: model.name", trust_run=trusted)
    state = load_state(directory.path)
    if os.path.lexists(directory.path / "model.safetensors"):
        # The best model is kept unless the resumed epochs beat it: a damaged file would
        # otherwise end the run as its result, unread and unchecked.
        read_model_document(directory.path, trust_run=trusted)
    return config, directory, state


def _check_processes(config: RunConfig, processes: Processes) -> None:
    """What several processes need of the configuration."""
    if processes.alone:
        return
    batch = config.data.batch_size
    if batch % processes.world:
        raise ConfigError(
            f"data.batch_size: {batch} is the global batch; with {processes.world} processes it "
            f"must be a multiple of {processes.world} (each process takes an equal part)"
        )
    if config.train.sync_bn and processes.backend != "nccl":
        raise ConfigError(
            "train.sync_bn: SyncBatchNorm runs on GPUs only (torch has no CPU implementation); "
            "drop it for a CPU run"
        )


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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (what a run does before building its model)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _model(config: RunConfig, classes, state, run_dir: RunDirectory, trusted: Trust) -> ModelSetup:
    if state is None:
        return build_run_model(config, classes)
    # Resuming: the architecture from the saved record, the weights from the saved state —
    # the pretrained source is not needed any more.
    origin = f"{run_dir.path}/state: fingerprint"
    build = check_recorded_build(state["fingerprint"]["build"], origin, trust_run=trusted)
    expected = {k: tuple(v.shape) for k, v in state["model"].items()}
    model = build_architecture(build, tuple(classes), expected=expected)
    report = graft(model, state["model"], strategy="exact", source_name=f"{run_dir.path}/state")
    return ModelSetup(model, model.torchgraft_spec, build, report)


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


def _test_metrics(run_dir: RunDirectory, session: Session, own: Trust) -> dict[str, Any] | None:
    if "test" not in session.data.source.splits or not run_dir.file("model.safetensors").exists():
        return None
    from .artifacts import load

    best = load(run_dir.path, trust_run=own).to(
        session.runtime.device, memory_format=session.runtime.memory_format
    )
    return session.evaluate("test", model=best, alone=True).to_dict()


def _epoch_line(result) -> str:
    train, val = result.rows
    marker = " *" if result.improved else ""
    cached = " (cached features)" if result.cached else ""
    return (
        f"epoch {result.epoch + 1}: train loss {train['loss']:.4f} acc {train['acc1']:.2%} · "
        f"val loss {val['loss']:.4f} acc {val['acc1']:.2%} · {result.seconds:.1f}s{cached}{marker}"
    )


def _finish(
    config, run_dir: RunDirectory, session: Session, console, seconds: float, own: Trust
) -> Run:
    """The test split, plots, report and final table: rank 0's work (it alone reads the
    saved best model); the others wait for it."""
    test = None
    processes = session.processes
    if processes.main:
        test = _test_metrics(run_dir, session, own)
        with writing_into(run_dir.path):
            if test is not None:
                run_dir.write_json("test_metrics.json", test)
            if config.output.plots:
                write_plots(run_dir.path, session)
            write_report(run_dir.path, trust_run=own)  # with the worst-classified images
        console.table("result", ("", ""), final_rows(session, test, seconds, run_dir.path))
    processes.barrier()
    return Run(
        run_dir.path,
        {**session.best.get("metrics", {}), "epoch": session.best.get("epoch")},
        session.history,
        test,
        session.model,
        seconds,
    )
