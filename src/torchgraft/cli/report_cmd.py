"""``torchgraft report``: being built this session (placeholder so the command is registered)."""

from __future__ import annotations

import argparse

NAME = "report"
HELP = "regenerate a run directory's report.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    raise ConfigError("torchgraft report is not available yet")
