"""Fine-tune a model and leave a run directory; with no arguments, the embedded default run.

The configuration is the embedded default, then ``--config run.yaml``, then dotted
overrides in any of these forms: ``--train.epochs 1``, ``--optim.lr=0.01``,
``data.source=photos/`` (``-`` and ``_`` are the same in keys: ``--data.on-bad-image skip``).
``--print-config`` shows the resolved configuration and stops; ``--resume RUN_DIR``
continues a run from its last complete epoch, exactly.
"""

from __future__ import annotations

import argparse

NAME = "train"
HELP = "fine-tune a model (no arguments: the embedded default run)"
#: main.py passes words it does not know (the dotted overrides) to ``run``.
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", metavar="RUN.yaml", help="run configuration (YAML)")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved configuration and stop"
    )
    parser.add_argument("--resume", metavar="RUN_DIR", help="continue this run exactly")
    parser.epilog = "overrides: --section.key VALUE, e.g. --train.epochs 1 --optim.lr 0.01"


def run(args: argparse.Namespace) -> int:
    from ..engine.config import load_config

    overrides = list(args.overrides)
    if args.print_config:
        if args.resume:
            from pathlib import Path

            config = load_config(Path(args.resume) / "config.yaml", overrides, check_names=False)
        else:
            config = load_config(args.config, overrides, check_names=False)
        print(config.to_yaml(), end="")
        return 0
    if args.resume and args.config:
        from ..errors import ConfigError

        raise ConfigError(
            "--resume uses the run's own config.yaml; drop --config (overrides are fine)"
        )
    from ..engine.fit import fit  # torch, timm and torchvision load here, not for --print-config

    fit(args.config, overrides, resume=args.resume)
    return 0
