"""Fine-tune a model and leave a run directory; with no arguments, the embedded default run.

The configuration is the embedded default, then ``--config run.yaml``, then dotted
overrides in any of these forms: ``--train.epochs 1``, ``--optim.lr=0.01``,
``data.source=photos/`` (``-`` and ``_`` are the same in keys: ``--data.on-bad-image skip``).
``--print-config`` shows the resolved configuration and the stages it plans, and stops
(it reads neither the data nor the weights); ``--resume RUN_DIR`` continues a run from its
last complete epoch, exactly.

Several processes: ``torchrun --nproc_per_node N -m torchgraft train …`` (any torchrun
options, several machines), or ``--nproc N``, which runs torchrun itself
(``torch.distributed.run --standalone``) on this machine with the same arguments.
"""

from __future__ import annotations

import argparse

from .common import add_trust_run_argument, positive_int

NAME = "train"
HELP = "fine-tune a model (no arguments: the embedded default run)"
#: main.py passes words it does not know (the dotted overrides) to ``run``.
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="RUN.yaml", help="run configuration (YAML)")
    parser.add_argument(
        "--print-config",
        action="store_true",
        help="print the resolved configuration and its planned stages, and stop "
        "(reads neither the data nor the weights)",
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run exactly")
    add_trust_run_argument(parser, "resume a run whose model is built by package.module:callable")
    parser.add_argument(
        "--nproc",
        type=positive_int,
        metavar="N",
        help="train on N processes of this machine (runs torchrun --standalone; "
        "for several machines use torchrun directly)",
    )
    parser.epilog = "overrides: --section.key VALUE, e.g. --train.epochs 1 --optim.lr 0.01"


def run(args: argparse.Namespace) -> int:
    overrides = list(args.overrides)
    if args.nproc and args.nproc > 1 and not args.print_config:
        return _launch(args, overrides)
    if args.resume and args.config:
        from ..errors import ConfigError

        raise ConfigError(
            "--resume uses the run's own config.yaml; drop --config (overrides are fine)"
        )
    if args.print_config:
        return _print_config(args, overrides)
    from ..engine.fit import fit  # torch, timm and torchvision load here, not for --print-config

    if args.trust_run and not args.resume:
        from .common import OptionError

        raise OptionError("--trust-run is for --resume RUN_DIR (a config you pass is yours)")
    fit(args.config, overrides, resume=args.resume, trust_run=args.trust_run)
    return 0


def _print_config(args: argparse.Namespace, overrides: list[str]) -> int:
    """``--print-config``: the resolved configuration and its planned stages on stdout.

    Neither the data nor the weights are read, so a ``data.source`` that does not exist yet
    is fine (the files are checked when a run starts); see
    :func:`~torchgraft.engine.config.show.show_config`. With ``--resume``, the overrides a
    resume would refuse are refused here too."""
    import sys
    from pathlib import Path

    from ..engine.config.load import load_config
    from ..engine.config.show import show_config

    source = Path(args.resume) / "config.yaml" if args.resume else args.config
    if args.resume:  # (its checks import torch: a plain --print-config does not)
        from ..engine.resume import resumed_config

        config = resumed_config(args.resume, overrides, check_paths=False)[2]
    else:
        config = load_config(source, overrides, check_paths=False, check_names=False)
    origin = [str(source)] if source else []
    show_config(config, sys.stdout, origin=[*origin, *(["the overrides"] if overrides else [])])
    return 0


def _launch(args: argparse.Namespace, overrides: list[str]) -> int:
    """``--nproc N``: torch's own launcher runs ``torchgraft train`` (these arguments, without
    --nproc) in N processes; their exit status is this command's."""
    from ..engine.distributed import launch_arguments, launched_by_torchrun
    from .common import OptionError

    if launched_by_torchrun():
        raise OptionError("--nproc: already one of several processes (torchrun); drop --nproc")
    command = ["train"]
    if getattr(args, "debug", False):
        command.insert(0, "--debug")
    if args.config:
        command += ["--config", args.config]
    if args.resume:
        command += ["--resume", args.resume]
    if args.trust_run:
        command.append("--trust-run")
    command += overrides
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser
    from torch.distributed.run import run as torchrun

    try:
        torchrun(get_args_parser().parse_args(launch_arguments(args.nproc, command)))
    except ChildFailedError as failed:
        # Each process has printed its own error line; report the first one's status.
        # The root cause: a process that exited by itself (torchrun then stops the others
        # with SIGTERM), the earliest first.
        status = min(failed.failures.values(), key=lambda f: (f.exitcode < 0, f.timestamp)).exitcode
        return 128 - status if status < 0 else status or 1  # killed by a signal: 128 + it
    return 0
