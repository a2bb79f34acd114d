"""``torchgraft export``: being built this session (placeholder so the command is registered)."""

from __future__ import annotations

import argparse

NAME = "export"
HELP = "export a trained run to TorchScript, torch.export or ONNX"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from ..errors import ConfigError

    raise ConfigError("torchgraft export is not available yet")
