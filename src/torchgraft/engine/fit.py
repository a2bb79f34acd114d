"""``tg.fit(config)``: what ``torchgraft train`` runs, top to bottom.

config (validated) → data source (classes) → model (build, head, graft, verify, init) →
runtime (device, precision, threads) → data (decoded or scanned, preprocessing from the
model's spec) → session (stages, optimizer, scheduler) → epochs (train, validate, save the
best model, save the resume state, then the metrics rows) → test split, plots, final table.

``resume=RUN_DIR`` reads the run's own ``config.yaml`` (overrides may change only what leaves
it the same run, :mod:`.resume.changes`; more epochs extend it, :mod:`.resume.budget`),
rebuilds the architecture from the saved record, restores the last complete epoch's state
and continues: the final weights are bitwise those of an uninterrupted run (CPU). A changed
model, class list or dataset is refused with the difference; a run with nothing left to
train says so and touches nothing.

Under ``torchrun`` every process runs this same function (:mod:`.distributed`): rank 0
creates the run directory, reads what a resume needs and hands it to the others, writes every
file and prints; all of them train their share, check at every checkpoint that their weights
are still identical, and wait for rank 0's writes at a barrier. When torchrun restarts the
workers (``--max-restarts``), the run continues from its last complete epoch by itself.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..data.prepare import PreparedData
from ..data.scan import write_bad_list
from ..errors import ConfigError, TorchgraftError
from ..model.build_record import Trust
from ..wording import option, renamed
from .artifacts import result_snapshot, save_result
from .config.load import CONFIG_OPTIONS, RunConfig, load_config, parse_overrides
from .console import PhaseClock, RunConsole, phase_line
from .distributed import (
    Processes,
    check_processes,
    earlier_attempt,
    joined,
    launched_by_torchrun,
    torchrun_record,
)
from .replicas import check_replicas_agree
from .report.summary import final_rows, graft_lines, write_plots
from .report.write import write_report
from .resume import (
    PHASES,
    check_same_run,
    extension_lines,
    finished_line,
    finishing_line,
    interrupted_line,
    read_run,
    record_resume,
    run_fingerprint,
    save_state,
    state_epoch,
    state_file,
)
from .run_dir import RunDirectory, writing_into
from .session import Session
from .setup import ModelSetup, start_run

__all__ = ["Run", "fit"]


@dataclass(repr=False)
class Run:
    """The outcome of :func:`fit`.

    Attributes:
        dir: the run directory (``tg.load(run.dir)`` gives the best model back).
        best: the best epoch's validation metrics, with ``epoch`` (0-based).
        history: every metrics row (one per epoch and split).
        test: metrics of the best model on the test split, when the data has one.
        model: the model in memory at the end of training (the last epoch's weights; with
            adapters, the adapted model — :func:`torchgraft.merge_adapters` makes it plain,
            as the run directory's ``model.safetensors`` is).
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
    console = console or RunConsole()
    console.clock = PhaseClock.for_command()  # the run's wall time, split by phase at its end
    # Inside a run, options are config keys: a graft that falls short says graft.min_coverage.
    with renamed(CONFIG_OPTIONS):
        return _fit(config, overrides, resume, console, trust_run)


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
    with joined(device) as processes:
        return _fit_process(config, overrides, resume, console, processes, trust_run)


def _fit_process(
    config, overrides, resume, console: RunConsole, processes: Processes, trust_run: bool
) -> Run:
    if not processes.main:
        console = RunConsole(quiet=True)  # one process speaks for the run
    # What the caller named in this call is trusted; a builder read from a run's files only
    # with the opt-in (torchgraft.model.build_record).
    trusted = True if trust_run else ({config.model.name} if config is not None else set())
    if config is not None:
        check_processes(config, processes)  # before a run folder is made
    config, run_dir, state = _open(config, overrides, resume, processes, trusted)
    # (A torchrun restart, resume None, after the last epoch: its finishing is what is left.)
    finished = finished_line(run_dir.path, state, config) if state and resume else None
    finishing = None  # rank 0 alone may see the folder's files: it decides for all
    if finished is not None:
        found = finishing_line(run_dir.path, state, config) if processes.main else None
        finishing = processes.broadcast(found)
    if finished is not None and finishing is None:  # nothing is built, written or timed
        console.line(finished)
        return _finished_run(run_dir, state)
    check_processes(config, processes)  # a resumed run's own configuration
    start = start_run(
        config, processes, state=state, run_dir=run_dir.path, trusted=trusted, progress=console
    )
    setup, data, session = start.setup, start.data, start.session
    if state is not None:
        check_same_run(state, config, setup, data)
    if processes.main:
        with writing_into(run_dir.path, resumable=state is not None):
            if state is not None and finishing is None:  # before config.yaml changes
                record_resume(run_dir, config, state["epoch"] + 1)
            _write_start(
                run_dir, config, setup, data, start.source.summary(), console, resumed=bool(state)
            )
            run_dir.write_json("decisions.json", session.decisions)
    for note in [*start.notes, session.stages.budget_note(), finishing]:
        if note:
            console.line(note)
    first = session.begin(state, origin=str(state_file(run_dir.path)))
    for note in extension_lines(session.stages, state, first) if state is not None else ():
        console.line(note)
    runtime = session.runtime
    console.line(
        f"runtime: {runtime.describe()}; data {'in memory' if data.in_memory else 'streamed'}"
        + (
            ""
            if processes.alone
            else f"; {processes.describe()}, global batch {config.data.batch_size}"
        )
    )
    precision = next(d for d in session.decisions if d["what"] == "precision")
    console.line(f"precision {precision['chosen']}: {precision['why']}")
    console.clock.settle("start")  # everything so far: model, graft, data, runtime
    started = time.perf_counter()
    try:
        if finishing is None:
            _epochs(config, setup, data, session, run_dir, console, first)
    except KeyboardInterrupt:
        console.stop_progress()
        console.line(interrupted_line(config, run_dir.path))
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
            best = result_snapshot(session.evaluation_model())
        stop = session.should_stop()
        if stop or _checkpoint_after(session, result, epoch):
            state = session.state(epoch)  # every process: their random streams are gathered
            check_replicas_agree(session.model, processes, epoch)
            if processes.main:
                with console.clock.phase("checkpoints"), writing_into(run_dir.path, resumable=True):
                    if best is not None:
                        document = _model_document(config, setup, data, session)
                        save_result(run_dir.path, best, document)
                        best = None
                    fingerprint = run_fingerprint(setup, data)
                    save_state(run_dir.path, epoch, {**state, "fingerprint": fingerprint})
                    run_dir.write_metrics(session.history)
                    run_dir.write_json("policy.json", session.policies)
                    run_dir.write_json("decisions.json", session.decisions)
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


def _finished_run(run_dir: RunDirectory, state: dict[str, Any]) -> Run:
    """A resumed run with nothing left to train, as its resume state records it (no model in
    memory, no test metrics: see the run directory)."""
    best = state["best"]
    return Run(
        run_dir.path, {**best.get("metrics", {}), "epoch": best.get("epoch")}, state["history"]
    )


def _checkpoint_after(session: Session, result, epoch: int) -> bool:
    """Save the resume state (and the rows, and the best model) after this epoch?

    Always, except inside a run of cached epochs: one costs a fraction of a second (less than
    its checkpoint) and is redone exactly after a kill, so those are saved at the end of
    their stage.
    """
    last = epoch + 1 >= session.config.train.epochs
    stage_ends = last or session.stages.starts_stage(epoch + 1)
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
        elif earlier is not None:  # it failed before its first epoch: start afresh in it
            return config, RunDirectory(Path(earlier[0])), None
    if resume is None:
        path = None
        if processes.main:
            with writing_into(Path(config.output.dir), resumable=False):
                directory = RunDirectory.create(
                    config.output.dir, config.output.name, config.model.name
                )
                if launched_by_torchrun():
                    directory.write_json("torchrun.json", torchrun_record(processes))
            path = directory.path
        return config, RunDirectory(processes.broadcast(path)), None
    if processes.alone:
        return read_run(resume, overrides, trusted)
    result = processes.broadcast(
        _attempt(read_run, resume, overrides, trusted) if processes.main else None
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


def _earlier_attempt(config: RunConfig) -> tuple[str, bool] | None:
    """After a torchrun restart: the failed attempt's run folder, and whether it holds a
    complete epoch to resume from (:func:`.distributed.earlier_attempt`)."""
    folder = earlier_attempt(config.output.dir)
    return None if folder is None else (str(folder), state_epoch(folder) is not None)


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


def _test_metrics(
    run_dir: RunDirectory, session: Session, own: Trust, on_step=None
) -> dict[str, Any] | None:
    """The saved best model's metrics on the test split (``on_step``: its progress), or
    None when the data has no test split or no model was saved."""
    if "test" not in session.data.source.splits or not run_dir.file("model.safetensors").exists():
        return None
    from .artifacts import load

    best = load(run_dir.path, trust_run=own).to(
        session.runtime.device, memory_format=session.runtime.memory_format
    )
    return session.evaluate("test", model=best, alone=True, on_step=on_step).to_dict()


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
    saved best model); the others wait for it. Then rank 0's last line: the wall time by
    phase, also written to ``phases.json``. The passes over images show bars with the time
    left (on a terminal)."""
    test = None
    processes = session.processes
    clock = console.clock
    if processes.main:
        with clock.phase("test"), console.task("test split", unit="images") as on_step:
            test = _test_metrics(run_dir, session, own, on_step)
        with clock.phase("report"), writing_into(run_dir.path):
            if test is not None:
                run_dir.write_json("test_metrics.json", test)
            if config.output.plots:
                write_plots(run_dir.path, session)
            with console.task("report: validation images", unit="images") as on_step:
                write_report(run_dir.path, trust_run=own, on_step=on_step)
        console.table("result", ("", ""), final_rows(session, test, seconds, run_dir.path))
    processes.barrier()
    if processes.main:
        # up to here: what is left is printing this line; the epochs say the run finished
        record = {**clock.record(), "epochs": 1 + max(r["epoch"] for r in session.history)}
        with writing_into(run_dir.path):
            run_dir.write_json(PHASES, record)
        console.line(phase_line(record))
    return Run(
        run_dir.path,
        {**session.best.get("metrics", {}), "epoch": session.best.get("epoch")},
        session.history,
        test,
        session.model,
        seconds,
    )
