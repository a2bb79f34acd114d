"""The rich console every command prints through, with one change: a closed pipe.

rich's own handling of a reader that went away (``torchgraft models | head -1``) points
stdout at /dev/null and raises ``SystemExit(1)``. Here the console raises
:class:`BrokenPipeError` instead, so :func:`torchgraft.cli.main.main` can end the way
``git log | head -1`` does: quietly, with status 141.
"""

from __future__ import annotations

from rich.console import Console

__all__ = ["PipeConsole"]


class PipeConsole(Console):
    """A rich console that lets a broken pipe propagate as :class:`BrokenPipeError`."""

    def on_broken_pipe(self) -> None:
        self.quiet = True  # nothing more to print where nobody reads
        raise BrokenPipeError
