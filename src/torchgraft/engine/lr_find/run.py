"""``torchgraft lr-find`` and ``tg.lr_find(config)``: the range test of the run a config
describes, built exactly as ``torchgraft train`` builds it.

The same config, seed, model (graft, head, initialisation), freezing and BatchNorm policy of
the first epoch, parameter groups and optimizer (:class:`~.session.Session`), runtime and
training data with its augmentation; then :func:`~.sweep.sweep` of ``optim.lr`` (every
group following it by its configured ratio), the files (:mod:`.outputs`) and, when
asked, the suggestion written into the config to train with. The model built here is thrown
away afterwards: nothing of the sweep reaches a later ``train``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import ConfigError, TrainingError
from ...text import printable
from ...wording import option, renamed
from ..config.load import CONFIG_OPTIONS, RunConfig, load_config
from ..console import RunConsole
from ..report.summary import graft_lines
from ..run_dir import make_folder, make_stamped_folder, writing_into
from ..setup import start_run
from .outputs import apply_suggestion, check_writable, print_result, write_outputs
from .rules import (
    AUTO,
    DEFAULT_END_LR,
    DEFAULT_START_LR,
    DEFAULT_STEPS,
    check_sweep,
)
from .sweep import LRFinderResult, sweep

__all__ = ["lr_find"]


def lr_find(
    config: RunConfig | Mapping[str, Any] | str | Path | None = None,
    overrides: Sequence[str] | Mapping[str, Any] = (),
    *,
    start_lr: float = DEFAULT_START_LR,
    end_lr: float = DEFAULT_END_LR,
    steps: int = DEFAULT_STEPS,
    rule: str = AUTO,
    output: str | Path | None = None,
    apply: bool = False,
    console: RunConsole | None = None,
) -> LRFinderResult:
    """The range test of the run ``config`` describes: what ``torchgraft lr-find`` runs.

    The model, freezing, parameter groups, optimizer, runtime and training data are built
    as :func:`~torchgraft.fit` builds them for the first epoch; the sweep is of ``optim.lr``
    (every group follows it by its configured ratio).

    Args:
        config, overrides: as for :func:`~torchgraft.fit`.
        start_lr, end_lr, steps: the sweep of ``optim.lr``.
        rule: which rule gives the suggestion: ``auto`` (``steep`` for SGD, ``valley`` for
            AdamW), ``steep``, ``valley`` or ``minimum``.
        output: the folder for ``lr_find.csv``, ``lr_find.json``, ``lr_find.png`` (default: a
            new ``<time>-<model>-lr-find`` folder in ``output.dir``).
        apply: write the suggestion as ``optim.lr`` (``optim.backbone_lr`` scaled with it):
            into ``config`` when it is a YAML file, else into ``run.yaml`` in the folder.
        console: where progress goes (default: stdout).

    Returns:
        An :class:`LRFinderResult` with ``dir`` set.

    Raises:
        ConfigError, DataError, SpecError, GraftError, CheckpointError: bad input.
        TrainingError: the loss diverged too early for any rule (the files are written).
        OutputError: a file cannot be written.

    Example:
        >>> found = tg.lr_find({"data": {"source": "photos/"}})
        >>> run = tg.fit({"data": {"source": "photos/"}}, {"optim.lr": found.suggestion})
    """
    check_sweep(start_lr, end_lr, steps)
    with renamed(CONFIG_OPTIONS):
        return _lr_find(
            config,
            overrides,
            (start_lr, end_lr, steps, rule),
            output,
            apply,
            console or RunConsole(),
        )


def _lr_find(source, overrides, settings, output, apply, console: RunConsole) -> LRFinderResult:
    config = load_config(source, overrides)
    target = Path(source) if apply and isinstance(source, (str, Path)) else None
    if target is not None:
        check_writable(target)  # before minutes of work, not after
    folder = _folder(config, output)
    session, start = _session(config, console)
    console.rule(f"torchgraft lr-find → {printable(folder)}")
    console.line(f"model: {config.model.name} · data {start.source.summary()}")
    for line in graft_lines(start.setup.report, start.setup.verification):
        console.line(line)
    for note in start.notes:
        console.line(note)
    start_lr, end_lr, steps, rule = settings
    console.line(
        f"runtime: {session.runtime.describe()}; first epoch's setup: "
        f"{session.stages.describe(0)}; sweeping optim.lr from {start_lr:.3g} to {end_lr:.3g} "
        f"over at most {steps} steps"
    )
    console.start_epoch("lr-find", steps)
    try:
        result = sweep(
            session.trainer,
            session.data.loader(
                "train",
                config.data.batch_size,
                shuffle=True,
                generator=session.generator,
                augment=session.augment,
            ),
            prepare=session.normalize,
            forward=session.forward,
            module=session.model,
            start_lr=start_lr,
            end_lr=end_lr,
            steps=steps,
            reference_lr=config.optim.lr,
            rule=rule,
            progress=console,
        )
    finally:
        console.stop_progress()
    result.dir = folder
    with writing_into(folder, resumable=False):
        write_outputs(result, folder)
    print_result(result, config, console)
    if result.suggestion is None:
        raise TrainingError(_no_suggestion(result, folder))
    if apply:
        for line in apply_suggestion(result, config, target, folder, overrides):
            console.line(line)
    return result


def _session(config: RunConfig, console: RunConsole | None = None):
    """The run's first epoch, set up as :func:`~torchgraft.fit` sets it up (one function,
    :func:`~..setup.start_run`), then the optimizer and the stage of epoch 0."""
    start = start_run(config, progress=console)
    session = start.session
    session.begin()
    session.stages.enter(session.trainer.optimizer, 0)  # what run_epoch(0) does first
    session.trainer.ema = None  # nobody keeps the average of a sweep's weights
    return session, start


def _no_suggestion(result: LRFinderResult, folder: Path) -> str:
    # The rules skip the first steps // 10 points and the last 5: a curve needs a few more.
    done = len(result.lrs)
    if result.stop in ("diverged", "non-finite"):
        why = f"the loss diverged after {done} steps, before the rules had enough of a curve"
        then = f"start lower ({option('start_lr')}) or take more steps ({option('steps')})"
    else:
        why = f"{done} steps are too few for the rules (they skip the first and last few)"
        then = f"take more steps ({option('steps')}, {DEFAULT_STEPS} is usual)"
    return f"no suggestion: {why} (see {printable(folder / 'lr_find.csv')}); {then}"


def _folder(config: RunConfig, output: str | Path | None) -> Path:
    """``output`` (created), or a new ``<time>-<model>-lr-find`` folder in ``output.dir``."""
    if output is not None:
        folder = Path(output)
        if folder.exists() and not folder.is_dir():
            raise ConfigError(
                f"{option('output', str(folder))}: a file is in the way; give a folder"
            )
        with writing_into(folder.parent, resumable=False):
            make_folder(folder)  # the folder you named: yours to reuse (removed if left empty)
        return folder
    parent = Path(config.output.dir)
    with writing_into(parent, resumable=False):
        return make_stamped_folder(parent, config.model.name, "lr-find")  # train's naming
