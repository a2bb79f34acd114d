"""``torchgraft lr-find``: being built this session (placeholder so the command is registered)."""

from __future__ import annotations

import argparse

NAME = "lr-find"
HELP = "find a learning rate with the range test"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    raise ConfigError("torchgraft lr-find is not available yet")
