"""Find a learning rate with the range test, on the run ``train`` would make.

The model, freezing, optimizer groups and training data are built exactly as ``train``
builds them for its first epoch (same ``--config`` and dotted overrides); ``optim.lr`` then
grows exponentially from ``--start-lr`` to ``--end-lr`` over at most ``--steps`` steps,
every optimizer group following it by its configured ratio, until the smoothed loss passes
4 × its lowest. Prints the LR each rule suggests (steep, valley, minimum/10; the suggestion
is steep for SGD, valley for AdamW, or ``--rule``) and writes ``lr_find.csv``,
``lr_find.json`` and ``lr_find.png`` into ``-o DIR`` (default: a new
``<time>-<model>-lr-find`` folder in ``output.dir``). ``--apply`` writes the suggestion as
``optim.lr`` into the ``--config`` file (other keys and comments kept), or, without one,
into ``run.yaml`` next to the plot.
"""

from __future__ import annotations

import argparse

NAME = "lr-find"
HELP = "find a learning rate with the range test (same model, policies and data as train)"
#: main.py passes words it does not know (the dotted overrides) to ``run``.
ACCEPTS_OVERRIDES = True


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..engine.lr_find.rules import (
        AUTO,
        DEFAULT_END_LR,
        DEFAULT_START_LR,
        DEFAULT_STEPS,
        MAX_STEPS,
        MIN_STEPS,
        RULES,
    )
    from .common import positive_float

    parser.add_argument("--config", metavar="RUN.yaml", help="run configuration (YAML)")
    parser.add_argument(
        "--start-lr",
        type=positive_float,
        default=DEFAULT_START_LR,
        metavar="LR",
        help=f"first optim.lr of the sweep (default {DEFAULT_START_LR:g})",
    )
    parser.add_argument(
        "--end-lr",
        type=positive_float,
        default=DEFAULT_END_LR,
        metavar="LR",
        help=f"last optim.lr of the sweep (default {DEFAULT_END_LR:g})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=DEFAULT_STEPS,
        metavar="N",
        help=f"optimizer steps at most, {MIN_STEPS} to {MAX_STEPS} (default {DEFAULT_STEPS})",
    )
    parser.add_argument(
        "--rule",
        choices=(AUTO, *RULES),
        default=AUTO,
        help="which rule's LR is the suggestion (auto: steep for SGD, valley for AdamW)",
    )
    parser.add_argument("-o", "--output", metavar="DIR", help="folder for lr_find.csv/.json/.png")
    parser.add_argument(
        "--apply",
        action="store_true",
        help="write the suggestion as optim.lr into --config (or DIR/run.yaml)",
    )
    parser.epilog = (
        "overrides: --section.key VALUE, e.g. --data.source photos/ --data.batch_size 16"
    )


def run(args: argparse.Namespace) -> int:
    # The numbers are checked before torch loads: a typo costs nothing.
    from ..engine.lr_find.rules import check_sweep

    check_sweep(args.start_lr, args.end_lr, args.steps)
    from ..engine.lr_find.run import lr_find  # torch, timm and torchvision load here

    lr_find(
        args.config,
        list(args.overrides),
        start_lr=args.start_lr,
        end_lr=args.end_lr,
        steps=args.steps,
        rule=args.rule,
        output=args.output,
        apply=args.apply,
    )
    return 0
