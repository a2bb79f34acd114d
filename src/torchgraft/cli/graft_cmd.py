"""Graft a checkpoint into a model: plan, show, apply, verify, write.

Reads SOURCE (a checkpoint file or folder, or a model spec with weights such as
``torchvision:resnet50`` or ``timm:resnet50.a1_in1k``), builds MODEL_SPEC, works out which
source tensor feeds which target tensor, and prints the plan (``--dry-run``) or the report.
Nothing is loaded below ``--min-coverage``. ``--verify-with`` builds the source architecture,
runs both models on one input and fails loudly if the function changed (exit status 1 and a
``VERIFICATION FAILED`` line: the difference, the tolerance, where the models part). ``-o``
writes the grafted weights as safetensors with a JSON sidecar (source, sha256 of both files,
mapping, report); its folder is created if missing.

Options are checked together before anything is read: an option this run would ignore is
refused (``--tolerance`` without ``--verify-with``, ``--strategy``/``--rules`` with
``--plan``, reader options with a model-spec SOURCE), ``--rules`` alone means ``--strategy
rules``, and an output path that cannot be written is named before the graft runs. A dry run
is a preview of the whole command line: with ``-o`` it checks the path and says what it
would write (and the verification it would run), and writes nothing. Names from the checkpoint are printed escaped (:mod:`torchgraft.text`).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..atomic import landing, same_file
from ..errors import GraftError, VerificationError
from ..text import printable, printable_lines
from .common import (
    OptionError,
    add_checkpoint_safety_arguments,
    check_not_an_input,
    check_output_path,
    fraction,
    non_negative_float,
    positive_int,
)

NAME = "graft"
HELP = "load a checkpoint into a model whose keys differ, with a plan and a report"

# Literal copies of the library's names and defaults, so that `--help` needs no torch import;
# tests/cli/test_cli_light.py checks they equal graft.match.STRATEGIES etc.
STRATEGIES = ("auto", "exact", "shape", "order", "rules")
IN_CHANS_MODES = ("sum", "mean", "repeat", "pick")
MIN_COVERAGE = 0.5
DEFAULT_TOLERANCE = 1e-4
#: What a cut listing says after "… N more".
MORE_HINT = "--all lists every key"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="SOURCE", help="checkpoint file/folder or model spec")
    parser.add_argument("--into", required=True, metavar="MODEL_SPEC", help="the target model")
    parser.add_argument("--num-classes", type=positive_int, help="classes of the target head")
    parser.add_argument("--in-chans", type=positive_int, help="input channels of the target")
    parser.add_argument(
        "--strategy", choices=list(STRATEGIES), help="how keys are paired (default: auto)"
    )
    parser.add_argument(
        "--rules", metavar="RULES.yaml", help="rename rules (implies --strategy rules)"
    )
    parser.add_argument("--in-chans-mode", choices=IN_CHANS_MODES, help="first-conv adaptation")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, load nothing")
    parser.add_argument("--plan-out", metavar="PLAN.yaml", help="write the editable plan")
    parser.add_argument("--plan", metavar="PLAN.yaml", help="apply a plan written by --plan-out")
    parser.add_argument("--verify-with", metavar="SOURCE_MODEL_SPEC", help="source architecture")
    parser.add_argument(
        "--tolerance",
        type=non_negative_float,
        help=f"with --verify-with: largest output difference allowed (default: {DEFAULT_TOLERANCE})",
    )
    parser.add_argument("-o", "--output", metavar="OUT.safetensors", help="write grafted weights")
    parser.add_argument(
        "--min-coverage",
        type=fraction,
        default=MIN_COVERAGE,
        help=f"refuse below this fraction of target elements loaded, 0 to 1 (default: {MIN_COVERAGE})",
    )
    parser.add_argument(
        "--allow-partial",
        action="append",
        nargs="?",
        const="*",
        metavar="GLOB",
        help="accept target keys outside the head left unloaded (all, or those matching GLOB; "
        "repeatable)",
    )
    parser.add_argument(
        "--allow-uncertain",
        action="store_true",
        help="accept pairings that order only suggested (verify such a graft)",
    )
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    add_checkpoint_safety_arguments(parser)
    parser.add_argument("--all", action="store_true", help="list every key, not the first 12")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    check_options(args)  # before torch is imported: a mistake in the flags costs nothing

    from ..grafting.api import graft, plan_graft
    from ..grafting.planner import plan_from_mapping
    from ..grafting.verify import verify_graft
    from ..zoo import create_model
    from ..zoo.grafts import identified_architecture, resolve_source, resolve_source_model

    read_options = {
        "ema": args.ema,
        "allow_globals": args.allow_global,
        "trust": args.trust_checkpoint,
    }
    weights = resolve_source(args.source, **read_options)
    source_model = resolve_source_model(args.verify_with)
    model = create_model(args.into, num_classes=args.num_classes, in_chans=args.in_chans)
    options = {"in_chans_mode": args.in_chans_mode}
    if args.plan:
        plan = plan_from_mapping(model, weights, _read_plan(args.plan), **options)
    else:
        plan = plan_graft(
            model,
            weights,
            strategy=args.strategy or ("rules" if args.rules else "auto"),
            rules=args.rules,
            source_model=source_model,
            identify=identified_architecture,
            **options,
        )
    _check_in_chans_mode_used(plan, args)
    plan_file = _write_plan(plan, Path(args.plan_out)) if args.plan_out else None
    acceptance = {
        "allow_partial": args.allow_partial or False,
        "allow_uncertain": args.allow_uncertain,
    }
    if args.dry_run:
        _show(plan, args)
        _said_plan(plan_file, args)
        _said_dry_run(args)
        _would_refuse(plan, model, acceptance, args.min_coverage)
        return 0
    report = graft(model, weights, plan=plan, min_coverage=args.min_coverage, **acceptance)
    result = None
    if args.verify_with:
        tolerance = DEFAULT_TOLERANCE if args.tolerance is None else args.tolerance
        result = verify_graft(
            model, source_model, weights, tolerance=tolerance, source_name=args.verify_with
        )
        report.verification = result.to_dict()
        report.notes.append(str(result))
    if args.output and (result is None or result.ok):
        _write_output(Path(args.output), model, report, weights)
    _show(report, args)
    _said_plan(plan_file, args)
    if result is not None and not result.ok:
        # After the report, so the failure is the last thing on the terminal; main turns it
        # into the one error line on stderr and exit status 1.
        unwritten = f"; nothing was written to {printable(args.output)}" if args.output else ""
        raise VerificationError(f"VERIFICATION FAILED: {result.problem}{unwritten}")
    return 0


def check_options(args: argparse.Namespace) -> None:
    """Refuse options this run would ignore, and outputs that cannot be written, before any
    file is read or model built (a typo found after a minute of grafting costs a minute).

    Raises:
        OptionError: the options contradict each other, or an output path is unusable.
    """
    if args.tolerance is not None and not args.verify_with:
        raise OptionError(
            "--tolerance applies to the output comparison of --verify-with SOURCE_MODEL_SPEC; "
            "add --verify-with or drop --tolerance"
        )
    if args.plan and (args.strategy or args.rules):
        given = "--strategy" if args.strategy else "--rules"
        raise OptionError(
            f"--plan gives every pairing itself, so {given} would be ignored; drop one of them"
        )
    if args.rules and args.strategy not in (None, "rules"):
        raise OptionError(
            f"--rules is used only by --strategy rules, not --strategy {args.strategy}; drop "
            "--strategy (--rules alone means --strategy rules) or drop --rules"
        )
    reader = [
        flag
        for flag, given in (
            ("--ema", args.ema),
            ("--allow-global", args.allow_global),
            ("--trust-checkpoint", args.trust_checkpoint),
        )
        if given
    ]
    if reader and _names_a_model(args.source):
        raise OptionError(
            f"{' and '.join(reader)} {'apply' if len(reader) > 1 else 'applies'} to a checkpoint "
            f"file, and SOURCE "
            f"'{printable(args.source)}' is a model spec (its library loads the weights); drop "
            f"{'them' if len(reader) > 1 else 'it'} or give a file"
        )
    _check_outputs(args)


def _check_outputs(args: argparse.Namespace) -> None:
    """``-o``, its sidecar and ``--plan-out`` must be writable files, none of them over
    another or over a file this command reads (SOURCE, ``--rules``, ``--plan``; --plan-out
    may rewrite the plan it applies, which is read first)."""
    outputs = {}
    if args.output:
        outputs["-o/--output"] = (args.output, "model.safetensors")
        sidecar = str(Path(args.output).with_suffix(".json"))
        outputs["-o/--output (its sidecar)"] = (sidecar, "model.json")
    if args.plan_out:
        outputs["--plan-out"] = (args.plan_out, "plan.yaml")
    read = {"SOURCE": args.source, "--rules": args.rules, "--plan": args.plan}
    for flag, (path, example) in outputs.items():
        check_output_path(path, flag, example)
        inputs = {k: v for k, v in read.items() if v and Path(v).exists()}
        if flag == "--plan-out":
            inputs.pop("--plan", None)
        check_not_an_input(path, flag, inputs)
    written = list(outputs.items())
    for index, (flag, (path, _)) in enumerate(written):
        for other, (there, _) in written[index + 1 :]:
            if same_file(path, there):
                raise OptionError(
                    f"{flag} {printable(path)} and {other} {printable(there)} are the same "
                    "file: one would replace the other; give them different names"
                )


def _check_in_chans_mode_used(plan, args: argparse.Namespace) -> None:
    """--in-chans-mode acts only where the first convolution's input channels differ; when
    none do, it would be silently ignored: refuse it (before anything is loaded)."""
    if args.in_chans_mode is None:
        return
    if any((e.adapt or {}).get("kind") == "in_chans" for e in plan.entries):
        return
    raise OptionError(
        f"--in-chans-mode {args.in_chans_mode} was not used: the first convolutions of the "
        "source and the target take the same number of input channels (change the target's "
        "with --in-chans); drop --in-chans-mode"
    )


def _names_a_model(source: str) -> bool:
    from ..grafting.source import looks_like_spec  # imports torch: only when needed

    return looks_like_spec(source) and not Path(source).exists()


def _show(plan, args: argparse.Namespace) -> None:
    from .output import print_json

    if args.json:
        document = plan.to_dict()
        document["dry_run"] = bool(args.dry_run)
        document["output"] = args.output if not args.dry_run else None
        if args.dry_run and args.output:
            document["would_write"] = args.output
        print_json(document)
    else:
        print(_render(plan, limit=None if (args.all or args.dry_run) else 12))


def _render(plan, limit: int | None) -> str:
    """The plan's table with its "N more" lines naming the flag that lists every key.

    Keys come from the checkpoint: every line is escaped (a key holding ESC cannot clear the
    terminal). The report escapes each line before joining them (a key holding a newline
    cannot forge a line); this is the safety net for the text as a whole."""
    return printable_lines(plan.render(limit=limit, more_hint=MORE_HINT))


def _said_dry_run(args: argparse.Namespace) -> None:
    """What the same command without --dry-run would also do (so -o is not silently dropped)."""
    later = []
    if args.verify_with:
        later.append(f"verify the outputs against {printable(args.verify_with)}")
    if args.output:
        out = Path(args.output)
        later.append(f"write {printable(out)} and {printable(out.with_suffix('.json'))}")
    if later:
        print(
            f"dry run: nothing was loaded or written; without --dry-run this would also "
            f"{' and '.join(later)}",
            file=sys.stderr if args.json else sys.stdout,
        )


def _would_refuse(plan, model, acceptance, min_coverage: float) -> None:
    """A dry run says on stderr when the graft itself would be refused (coverage below
    --min-coverage, or not exact)."""
    import warnings

    from ..errors import InexactGraftError
    from ..grafting.exactness import check_exact
    from ..grafting.graft_plan import percent
    from ..grafting.planner import head_keys

    if plan.coverage < min_coverage:
        print(
            f"torchgraft graft: the graft would be refused: it loads {percent(plan.coverage)} "
            f"of the target's parameter elements, below --min-coverage {min_coverage}",
            file=sys.stderr,
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_exact(plan, head_keys(model), **acceptance)
    except InexactGraftError as exc:
        print(
            printable_lines(f"torchgraft graft: the graft would be refused: {exc}"),
            file=sys.stderr,
        )


def _said_plan(path: Path | None, args: argparse.Namespace) -> None:
    """Where ``--plan-out`` wrote, after the table (on stderr under ``--json``)."""
    if path is not None:
        again = printable(shlex.quote(str(path)))
        print(
            f"wrote the plan to {printable(path)}; edit it, then apply it with --plan {again}",
            file=sys.stderr if args.json else sys.stdout,
        )


def _read_plan(path: str) -> dict[str, str | None]:
    from ..checkpoint.documents import read_yaml
    from ..grafting.graft_plan import GraftPlan

    document = read_yaml(path, GraftError)  # bounded: size, nesting, aliases
    try:
        plan = GraftPlan.from_dict(document)
    except GraftError as exc:
        raise GraftError(f"{path}: {exc}") from None
    except (TypeError, ValueError, AttributeError, KeyError) as exc:
        # A hand edit that broke the document's structure (entries not a list, …).
        raise GraftError(
            f"{path}: not a plan written by --plan-out ({type(exc).__name__}: {exc})"
        ) from None
    mapping = {e.target: e.source if e.action.loads else None for e in plan.entries}
    odd = [k for k, v in mapping.items() if not isinstance(k, str) or not isinstance(v, str | None)]
    if odd:
        raise GraftError(f"{path}: 'target' and 'source' must be key names, got {odd[:3]}")
    return mapping


def _write_plan(plan, path: Path) -> Path:
    """Write the editable plan; returns its absolute path."""
    import yaml

    from ..atomic import atomic_write_text

    header = (
        "# torchgraft graft plan: edit 'source' (or set action: missing) and apply with --plan.\n"
        "# Actions are recomputed from the shapes when the plan is applied.\n"
    )
    path = landing(path)  # a link there is replaced, never written through (torchgraft.atomic)
    path.parent.mkdir(parents=True, exist_ok=True)  # like -o and the run's plots
    atomic_write_text(path, header + yaml.safe_dump(plan.to_dict(), sort_keys=False))
    return path


def _write_output(path: Path, model, report, weights) -> None:
    from ..checkpoint.write import save_grafted, sha256_file

    origin = Path(weights.checkpoint.origin)
    sidecar = {
        "source": weights.checkpoint.origin,
        "source_sha256": sha256_file(origin) if origin.is_file() else None,
        "target": getattr(model, "torchgraft_spec", None).to_dict()
        if getattr(model, "torchgraft_spec", None)
        else None,
        "mapping": report.mapping,
        "report": report.to_dict(),
    }
    path = landing(path)  # a link there is replaced, never written through (torchgraft.atomic)
    path.parent.mkdir(parents=True, exist_ok=True)  # checked writable by check_options
    save_grafted(path, model.state_dict(), sidecar)
    report.notes.append(f"wrote {path} and {path.with_suffix('.json')}")
