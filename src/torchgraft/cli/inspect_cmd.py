"""Show a checkpoint's tensors or a model's anatomy; never runs code from a file.

A checkpoint (file or Hugging Face-style folder) lists keys, shapes, dtypes and total size;
torch pickles are read with ``weights_only=True`` and memory-mapped, safetensors directly.
A model spec shows the anatomy torchgraft works with: head path(s), feature width, first
conv, preprocessing, class names, and the layer groups with their parameter counts. With
``--print-groups`` it also applies a freezing policy and prints what trains and the optimizer
parameter groups it would get (LR, weight decay, sizes, a few names), warning about frozen
parameters in an optimizer — the audit ``train --print-groups`` will print.

For a checkpoint it also names the zoo architecture whose state_dict has the same keys and
shapes (``architecture: torchvision:resnet50 — 320/320 keys and shapes``), or the nearest
ones, from an index of every architecture (:mod:`torchgraft.zoo.identify`: started from
the tables the package ships for the installed versions, built once per other version);
several builders with equal tables are named as one answer when they compute the same — by
the verdict the package ships for them (:mod:`torchgraft.zoo.equal_verdicts`), or else by
running them with the checkpoint's weights (:mod:`torchgraft.zoo.equal_tables`).
``--no-identify`` skips it. Keys and names read from a file are data: they are printed with
control characters escaped and never as console markup.

Options that do not apply to what TARGET is are refused rather than ignored (``--weights``
or the audit options for a checkpoint; ``--ema``/``--allow-global``/``--trust-checkpoint``
for a model spec without a ``--weights`` file). An audit option (``--freeze``, ``--bn``,
``--lr`` …) implies ``--print-groups``; ``--num-classes`` changes the head with or without it.
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from ..errors import CheckpointError, SpecError
from ..text import printable
from .common import (
    OptionError,
    add_checkpoint_safety_arguments,
    non_negative_float,
    positive_float,
    positive_int,
)

NAME = "inspect"
HELP = "show a checkpoint's keys/shapes/dtypes or a model's anatomy"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="PATH_OR_MODEL_SPEC")
    parser.add_argument("--weights", help="for a model spec: build with these weights")
    parser.add_argument("--ema", action="store_true", help="for a checkpoint: show its EMA weights")
    add_checkpoint_safety_arguments(parser)
    parser.add_argument("--json", action="store_true", help="print one JSON document")
    parser.add_argument(
        "--no-identify",
        dest="identify",
        action="store_false",
        help="for a checkpoint: do not look for the zoo architecture it comes from",
    )
    audit = parser.add_argument_group(
        "fine-tuning audit (model specs; each option implies --print-groups)"
    )
    audit.add_argument(
        "--print-groups", action="store_true", help="show the freeze summary and optimizer groups"
    )
    audit.add_argument("--freeze", metavar="POLICY", help="head, none, last:N, … (default: none)")
    audit.add_argument(
        "--bn",
        choices=("frozen", "stats", "train", "fixed"),
        help="BatchNorm policy (default: frozen)",
    )
    audit.add_argument(
        "--lr", type=positive_float, help="learning rate of the head (default: 0.001)"
    )
    audit.add_argument(
        "--backbone-lr", type=positive_float, help="learning rate of the other groups"
    )
    audit.add_argument("--layer-decay", type=positive_float, help="layer-wise LR decay factor")
    audit.add_argument("--weight-decay", type=non_negative_float, help="weight decay (default: 0)")
    parser.add_argument(
        "--num-classes", type=positive_int, help="for a model spec: replace the head first"
    )


#: The audit options, their defaults, and their flags (None: not given on the command line).
AUDIT_DEFAULTS = {
    "freeze": "none",
    "bn": "frozen",
    "lr": 1e-3,
    "backbone_lr": None,
    "layer_decay": None,
    "weight_decay": 0.0,
}


def run(args: argparse.Namespace) -> int:
    from .output import print_json

    path = Path(args.target)
    audit_given = [_flag(k) for k in AUDIT_DEFAULTS if getattr(args, k) is not None]
    if path.exists():
        _refuse_for_checkpoint(args, audit_given)  # before torch is imported

        from ..checkpoint.read import read_checkpoint

        checkpoint = read_checkpoint(
            path, ema=args.ema, allow_globals=args.allow_global, trust=args.trust_checkpoint
        )
        document = describe_checkpoint(checkpoint, identify=args.identify)
        if args.json:
            print_json(document)
        else:
            _print_checkpoint(document)
        return 0
    if "/" in args.target or args.target.startswith((".", "~")):
        raise CheckpointError(f"{printable(args.target)}: no such file or folder")
    if ":" not in args.target:
        raise SpecError(
            f"'{printable(args.target)}' is neither an existing file or folder nor a model spec "
            "(torchvision:NAME, timm:NAME, package.module:callable)"
        )
    read_options = _read_options_for_spec(args)
    for key, default in AUDIT_DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, default)
    audit = args if (args.print_groups or audit_given) else None
    document = describe_model(
        args.target,
        args.weights,
        audit,
        num_classes=args.num_classes,
        read_options=read_options,
    )
    if args.json:
        print_json(document)
    else:
        _print_model(document)
    return 0


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _refuse_for_checkpoint(args: argparse.Namespace, audit_given: list[str]) -> None:
    """Options about building a model mean nothing for a checkpoint: refuse, not ignore."""
    given = [
        flag
        for flag, value in (
            ("--weights", args.weights),
            ("--num-classes", args.num_classes),
            ("--print-groups", args.print_groups),
        )
        if value
    ] + audit_given
    if given:
        raise OptionError(
            f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to a model spec, and "
            f"'{printable(args.target)}' is a checkpoint; drop {'them' if len(given) > 1 else 'it'}"
            " (to audit a model with these weights: inspect MODEL_SPEC --weights FILE "
            "--print-groups)"
        )


def _read_options_for_spec(args: argparse.Namespace) -> dict[str, Any] | None:
    """The reader options for a ``--weights`` file; refused when there is no file to read."""
    given = [
        flag
        for flag, value in (
            ("--ema", args.ema),
            ("--allow-global", args.allow_global),
            ("--trust-checkpoint", args.trust_checkpoint),
        )
        if value
    ]
    if not given:
        return None
    if args.weights is not None:
        from ..zoo import is_weights_file  # imports torch: only when a file may be given
    if args.weights is None or not is_weights_file(args.weights):
        raise OptionError(
            f"{', '.join(given)} {'apply' if len(given) > 1 else 'applies'} to a checkpoint "
            "file, and no --weights FILE was given for this model spec (named weights are "
            "loaded by their library); drop "
            f"{'them' if len(given) > 1 else 'it'} or give --weights FILE"
        )
    return {"ema": args.ema, "allow_globals": args.allow_global, "trust": args.trust_checkpoint}


def describe_checkpoint(checkpoint, identify: bool = False) -> dict[str, Any]:
    """The checkpoint's format, sizes and tensors; with ``identify``, also ``architecture``:
    the zoo architecture it comes from (:meth:`Identification.to_dict`), or None."""
    dtypes = Counter(str(t.dtype).replace("torch.", "") for t in checkpoint.tensors.values())
    return {
        "kind": "checkpoint",
        "path": checkpoint.origin,
        "format": checkpoint.format,
        "container": checkpoint.container,
        "num_tensors": len(checkpoint.tensors),
        "num_elements": checkpoint.num_elements,
        "bytes": checkpoint.num_bytes,
        "dtypes": dict(dtypes),
        "set_aside": checkpoint.set_aside,
        "metadata": checkpoint.metadata,
        "tensors": [
            {"key": k, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
            for k, t in checkpoint.tensors.items()
        ],
        "architecture": _architecture(checkpoint.tensors) if identify else None,
    }


def _architecture(tensors) -> dict[str, Any]:
    """The identification as a dict; a failure is reported in it, never raised (the rest of
    the description stands on its own)."""
    from ..engine.console import RunConsole
    from ..zoo import build_model
    from ..zoo.equal_tables import settle_equal_tables
    from ..zoo.equal_verdicts import verdict
    from ..zoo.identify import identify
    from .output import stderr

    def note(library: str, count: int) -> None:
        # Only the first time (or after an upgrade): later calls read the index.
        stderr.print(
            f"indexing {count} {library} architectures to identify the checkpoint (once per "
            "version the package ships no tables for; minutes for all of timm; "
            "--no-identify skips it)",
            markup=False,
            highlight=False,
        )

    table = {k: tuple(t.shape) for k, t in tensors.items()}
    # A first build indexes every architecture of a library (minutes for timm): a bar with
    # the time left, on stderr and on a terminal only (stdout stays the description).
    building = RunConsole(sys.stderr).task("indexing architectures", unit="architectures")
    try:
        with building as on_step:
            found = identify(
                table, on_build=note, on_progress=lambda _library, done, n: on_step(done, n)
            )
        # Equal tables of several builders: run them, one answer when they agree.
        # Inspecting reads the verdict the package ships for these builders when it has one
        # (milliseconds); grafting always runs them with the file's weights.
        found = settle_equal_tables(
            found,
            tensors,
            lambda spec, classes: build_model(spec, num_classes=classes).model,
            known=verdict(found.exact_all) if len(found.exact_all) > 1 else None,
        )
    except Exception as exc:  # identification is an extra: inspect still shows the tensors
        error = f"{type(exc).__name__}: {exc}"
        return {"error": error, "summary": f"not identified ({error})"}
    return found.to_dict()


def describe_model(
    spec_text: str,
    weights: str | None,
    audit: argparse.Namespace | None = None,
    *,
    num_classes: int | None = None,
    read_options: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model's anatomy; with ``audit`` (the parsed audit options) also its freeze summary
    and optimizer groups. ``num_classes`` replaces the head first; ``read_options`` apply to
    a weights file."""
    from ..model.anatomy import spec_of
    from ..zoo import build_model, create_model

    if num_classes:
        model = create_model(
            spec_text, num_classes=num_classes, weights=weights, read_options=read_options
        )
    else:
        model = build_model(spec_text, weights=weights, read_options=read_options).model
    spec = spec_of(model)
    names = [n for n, _ in model.named_parameters()]
    owner = spec.group_of(names)
    counts = Counter()
    params = dict(model.named_parameters())
    for name, group in owner.items():
        counts[group] += params[name].numel()
    extra = _audit(model, audit) if audit is not None else {}
    return {
        **extra,
        "kind": "model",
        "spec": spec.to_dict(),
        "num_parameters": sum(p.numel() for p in params.values()),
        "group_parameters": {g.name: counts[g.name] for g in spec.layer_groups},
        "state_dict": [
            {"key": k, "shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", "")}
            for k, t in model.state_dict().items()
        ],
    }


def _audit(model, args: argparse.Namespace) -> dict[str, Any]:
    """Freeze as asked, build the parameter groups, and audit them (warnings collected)."""
    import warnings

    from ..policies.freezing import freeze
    from ..policies.optimizer_groups import audit_optimizer, param_groups

    summary = freeze(model, args.freeze, bn=args.bn)
    groups = param_groups(
        model,
        args.lr,
        backbone_lr=args.backbone_lr,
        weight_decay=args.weight_decay,
        layer_decay=args.layer_decay,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        report = audit_optimizer(groups, model)
    return {
        "freeze": summary.to_dict(),
        "param_groups": report.to_dict(),
        "freeze_text": summary.render(),
        "groups_text": report.render(),
    }


def _print_checkpoint(doc: dict[str, Any]) -> None:
    from .output import human_bytes, human_count, stdout, table

    # Keys come from the file: table() escapes control characters and reads no markup.
    rows = [
        (t["key"], "×".join(map(str, t["shape"])) or "scalar", t["dtype"]) for t in doc["tensors"]
    ]
    stdout.print(table(None, ("key", "shape", "dtype"), rows))
    container = f", inside '{doc['container']}'" if doc["container"] else ""
    dtypes = ", ".join(f"{k} {v}" for k, v in doc["dtypes"].items())
    _plain(
        f"{doc['path']}: {doc['format']}{container}; {doc['num_tensors']} tensors, "
        f"{human_count(doc['num_elements'])} elements, {human_bytes(doc['bytes'])} ({dtypes})"
    )
    if doc["set_aside"]:
        aside = ", ".join(f"{k} ({v})" for k, v in list(doc["set_aside"].items())[:8])
        _plain(f"set aside (not tensors): {aside}")
    if doc.get("architecture"):
        _plain(f"architecture: {doc['architecture']['summary']}")


def _plain(text: str) -> None:
    """One line of text from a file: control characters escaped, never read as markup."""
    from .output import plain

    plain(text)


def _print_model(doc: dict[str, Any]) -> None:
    from .output import human_count, stdout, table

    spec = doc["spec"]
    pre = spec["preprocessing"]
    facts = [
        ("model", spec["name"] + (f" ({spec['weights']})" if spec["weights"] else "")),
        (
            "head",
            ", ".join(spec["head_paths"]) + f"  ({spec['feature_dim']} → {spec['num_classes']})",
        ),
        ("first conv", f"{spec['first_conv']}  ({spec['in_chans']} input channels)"),
        (
            "input",
            f"{'×'.join(map(str, pre['input_size']))}, {pre['interpolation']}, crop {pre['crop_pct']:.3f}"
            + (" (fixed size)" if pre["fixed_input_size"] else ""),
        ),
        ("normalise", f"mean {_floats(pre['mean'])} std {_floats(pre['std'])}"),
        ("classes", _classes(spec["classes"])),
        ("parameters", human_count(doc["num_parameters"])),
    ]
    stdout.print(table(None, ("", ""), facts))
    rows = [
        (g["name"], ", ".join(g["members"]), human_count(doc["group_parameters"][g["name"]]))
        for g in spec["layer_groups"]
    ]
    stdout.print(table("layer groups (stem → head)", ("group", "modules", "params"), rows))
    if "freeze_text" in doc:
        # Module and parameter names are the user's (add_module takes any string but ".").
        _plain("")
        _plain(doc["freeze_text"])
        _plain("")
        _plain(doc["groups_text"])


def _floats(values: list[float]) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _classes(classes: list[str] | None) -> str:
    if not classes:
        return "unknown"
    return f"{len(classes)}: " + ", ".join(classes[:5]) + (" …" if len(classes) > 5 else "")
