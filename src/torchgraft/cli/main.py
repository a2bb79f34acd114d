"""``torchgraft`` entry point: parse, dispatch, and turn errors into one line and a status.

Exit status: 0 success; 2 bad input (a :class:`TorchgraftError` whose ``exit_code`` is 2, or
an invalid command line); 1 a failure of the operation itself. No traceback unless
``--debug``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from ..errors import TorchgraftError
from ..wording import speaking_cli
from . import eval_cmd, graft_cmd, inspect_cmd, models_cmd, predict_cmd, train_cmd

#: Subcommand modules, each with ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``;
#: optionally ``FLAGS``, ``{python_argument: flag}`` where the command's flag differs from
#: :data:`torchgraft.wording.CLI_FLAGS` (how library messages name options).
COMMANDS = (train_cmd, eval_cmd, predict_cmd, graft_cmd, inspect_cmd, models_cmd)


class OneLineParser(argparse.ArgumentParser):
    """argparse with the contract's error format: one line on stderr, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    # --debug is accepted before and after the subcommand; the subcommand's copy has no
    # default, so it cannot reset a --debug given before it.
    common = OneLineParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks on errors"
    )
    parser = OneLineParser(
        prog="torchgraft",
        description="Fine-tune pretrained PyTorch models correctly; graft weights between models.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"torchgraft {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for command in COMMANDS:
        child = sub.add_parser(
            command.NAME, help=command.HELP, description=command.__doc__, parents=[common]
        )
        command.add_arguments(child)
        child.set_defaults(run=command.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if getattr(args, "run", None) is None:
        parser.print_help(sys.stderr)
        return 2
    if extra and not getattr(_command(args.command), "ACCEPTS_OVERRIDES", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        # Messages raised inside name this command's flags, not the Python arguments.
        with speaking_cli(getattr(_command(args.command), "FLAGS", None)):
            return int(args.run(args) or 0)
    except TorchgraftError as exc:
        if args.debug:
            raise
        print(f"torchgraft {args.command}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"torchgraft {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        if args.debug:
            raise
        print(
            f"torchgraft {args.command}: internal error: {type(exc).__name__}: {exc} "
            "(run again with --debug for the traceback, and please report it)",
            file=sys.stderr,
        )
        return 1


def _command(name: str):
    return next(c for c in COMMANDS if name == c.NAME)


if __name__ == "__main__":
    sys.exit(main())
