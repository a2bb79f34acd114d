"""``torchgraft`` entry point: parse, dispatch, and turn errors into one line and a status.

Exit status: 0 success; 2 bad input (a :class:`TorchgraftError` whose ``exit_code`` is 2, or
an invalid command line); 1 a failure of the operation itself; 130 interrupted (Ctrl-C);
141 stdout closed early (``torchgraft models | head -1``). No traceback unless ``--debug``.

Only our own bugs are "internal error … please report it": every user mistake is a
:class:`TorchgraftError` raised where it is found. Error messages quote names from files
(tensor keys, pickle globals, paths), so they are printed escaped
(:func:`torchgraft.text.printable_lines`): a name cannot clear the screen or forge a line.

A closed stdout ends the command quietly, the way ``git log | head -1`` and
``ls -R / | head -1`` end: no message, no traceback, status 141 (128 + SIGPIPE, what a shell
reports for them). We do not restore the default SIGPIPE action to get there, because that
would also kill the process silently on a closed network socket (a weights download).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from ..errors import TorchgraftError
from ..text import printable_lines
from ..wording import speaking_cli
from . import (
    eval_cmd,
    export_cmd,
    graft_cmd,
    inspect_cmd,
    lr_find_cmd,
    models_cmd,
    predict_cmd,
    report_cmd,
    train_cmd,
)

#: Subcommand modules, each with ``NAME``, ``HELP``, ``add_arguments(parser)`` and ``run(args)``;
#: optionally ``FLAGS``, ``{python_argument: flag}`` where the command's flag differs from
#: :data:`torchgraft.wording.CLI_FLAGS` (how library messages name options).
COMMANDS = (
    train_cmd,
    lr_find_cmd,
    eval_cmd,
    predict_cmd,
    export_cmd,
    report_cmd,
    graft_cmd,
    inspect_cmd,
    models_cmd,
)


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
            status = int(args.run(args) or 0)
        sys.stdout.flush()  # a reader gone before the last buffered line shows up here
        return status
    except BrokenPipeError:
        if not _stdout_closed():
            raise  # another pipe (a worker's, a socket's): a real failure, not `| head`
        return _quietly_closed()
    except TorchgraftError as exc:
        if args.debug:
            raise
        _error_line(f"{_who(args)}: error: {exc}")
        return exc.exit_code
    except KeyboardInterrupt:
        _error_line(f"{_who(args)}: interrupted")
        return 130
    except Exception as exc:
        if args.debug:
            raise
        _error_line(
            f"{_who(args)}: internal error: {type(exc).__name__}: {exc} "
            "(run again with --debug for the traceback, and please report it)"
        )
        return 1


#: 128 + SIGPIPE: the status a shell shows for `git log | head -1`.
BROKEN_PIPE_STATUS = 141


def _error_line(text: str) -> None:
    """The error on stderr, names from files escaped (a message can quote a tensor key)."""
    print(printable_lines(text), file=sys.stderr)


def _quietly_closed() -> int:
    """Stdout's reader has gone: point stdout at /dev/null (so the interpreter's last flush
    cannot print "Exception ignored … BrokenPipeError") and end with status 141."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return BROKEN_PIPE_STATUS


def _stdout_closed() -> bool:
    """True when nothing reads stdout any more (a pipe whose reader closed it)."""
    try:
        import select

        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):
        return True  # no poll() (Windows) or no real stdout: the pipe is the likely one


def _who(args: argparse.Namespace) -> str:
    """``torchgraft COMMAND``, and the process's rank when it is one of several (torchrun):
    each process reports its own error."""
    rank = os.environ.get("RANK") if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1 else None
    return f"torchgraft {args.command}" + (f" (rank {rank})" if rank else "")


def _command(name: str):
    return next(c for c in COMMANDS if name == c.NAME)


if __name__ == "__main__":
    sys.exit(main())
