"""List what the model zoo can build, with each model's head path(s) and weights."""

from __future__ import annotations

import argparse

NAME = "models"
HELP = "list the models the zoo builds and their head paths"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--filter", help="only specs containing this text (case-insensitive)")
    parser.add_argument("--library", choices=("torchvision", "timm"), help="only this library")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    from ..zoo import list_models
    from .output import print_json, stdout, table

    entries = list_models(args.filter, args.library)
    if args.json:
        print_json(
            [
                {"spec": e.spec, "head_paths": list(e.head_paths), "weights": list(e.weights)}
                for e in entries
            ]
        )
        return 0
    rows = [(e.spec, ", ".join(e.head_paths), _weights(e.weights)) for e in entries]
    stdout.print(table(None, ("spec", "head", "weights"), rows))
    stdout.print(f"{len(entries)} models; also: package.module:callable for your own builder")
    return 0


def _weights(weights: tuple[str, ...]) -> str:
    shown = ", ".join(weights[:3])
    return shown + (f" (+{len(weights) - 3})" if len(weights) > 3 else "") if weights else "-"
