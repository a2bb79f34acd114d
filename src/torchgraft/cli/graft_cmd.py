"""Graft a checkpoint into a model: plan, show, apply, verify, write.

Reads SOURCE (a checkpoint file or folder, or a model spec with weights such as
``torchvision:resnet50`` or ``timm:resnet50.a1_in1k``), builds MODEL_SPEC, works out which
source tensor feeds which target tensor, and prints the plan (``--dry-run``) or the report.
Nothing is loaded below ``--min-coverage``. ``--verify-with`` builds the source architecture,
runs both models on one input and fails loudly if the function changed (exit status 1 and a
``VERIFICATION FAILED`` line: the difference, the tolerance, where the models part). ``-o``
writes the grafted weights as safetensors with a JSON sidecar named by the one rule for every
file torchgraft writes, ``OUT.safetensors.json`` (source, sha256 of both files, mapping,
report); its folder is created if missing.

Options are checked together before anything is read: an option this run would ignore is
refused (``--tolerance`` without ``--verify-with``, ``--strategy``/``--rules`` with
``--plan``, reader options with a model-spec SOURCE), ``--rules`` alone means ``--strategy
rules``, and an output path that cannot be written is named before the graft runs. A dry run
is a preview of the whole command line: with ``-o`` it checks the path and says what it
would write (and the verification it would run), and writes nothing. Names from the checkpoint are printed escaped (:mod:`torchgraft.text`).

The command checks its flags, makes one call, :func:`torchgraft.zoo.grafts.graft_into` (which
tells a model-spec SOURCE from a file once, reads it once, and owns the recipe; the plan file
is :mod:`torchgraft.grafting.plan_file`'s), and prints what comes back.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from ..atomic import same_file
from ..errors import VerificationError
from ..sidecars import sidecar_path
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
#: How library messages name the arguments whose flag is not their name (torchgraft.wording).
FLAGS = {"plan_file": "--plan"}


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
    parser.add_argument(
        "--allow-mismatch",
        action="store_true",
        help="load (and write) a graft whose outputs differ from the source architecture's",
    )
    parser.add_argument("--ema", action="store_true", help="use the checkpoint's EMA weights")
    add_checkpoint_safety_arguments(parser)
    parser.add_argument("--all", action="store_true", help="list every key, not the first 12")
    parser.add_argument("--json", action="store_true", help="print one JSON document")


def run(args: argparse.Namespace) -> int:
    check_options(args)  # before torch is imported: a mistake in the flags costs nothing

    from ..engine.console import RunConsole
    from ..zoo.grafts import graft_into

    # The verification's bar goes to stderr (on a terminal only): stdout stays the report.
    verifying = RunConsole(sys.stderr).task(f"verify against {printable(args.verify_with)}")
    with verifying as on_step:
        outcome = graft_into(
            args.source,
            args.into,
            num_classes=args.num_classes,
            in_chans=args.in_chans,
            strategy=args.strategy,
            rules=args.rules,
            in_chans_mode=args.in_chans_mode,
            plan_file=args.plan,
            plan_out=args.plan_out,
            source_model=args.verify_with,
            tolerance=args.tolerance,
            output=args.output,
            min_coverage=args.min_coverage,
            allow_partial=args.allow_partial or False,
            allow_uncertain=args.allow_uncertain,
            allow_mismatch=args.allow_mismatch,
            dry_run=args.dry_run,
            ema=args.ema,
            allow_globals=args.allow_global,
            trust=args.trust_checkpoint,
            on_step=on_step,
        )
    _show(outcome.plan, args)
    _said_plan(outcome.plan_file, args)
    if args.dry_run:
        _said_dry_run(args)
        for reason in outcome.refusals:
            print(
                printable_lines(f"torchgraft graft: the graft would be refused: {reason}"),
                file=sys.stderr,
            )
        return 0
    if not outcome.ok:
        # After the report, so the failure is the last thing on the terminal; main turns it
        # into the one error line on stderr and exit status 1.
        unwritten = f"; nothing was written to {printable(args.output)}" if args.output else ""
        raise VerificationError(f"VERIFICATION FAILED: {outcome.verification.problem}{unwritten}")
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
    # Reader options with a model-spec SOURCE are refused by graft_into, which tells a
    # model spec from a file (that needs torch) once for the whole command.
    _check_outputs(args)


def _check_outputs(args: argparse.Namespace) -> None:
    """``-o``, its sidecar and ``--plan-out`` must be writable files, none of them over
    another or over a file this command reads (SOURCE, ``--rules``, ``--plan``; --plan-out
    may rewrite the plan it applies, which is read first)."""
    outputs = {}
    if args.output:
        outputs["-o/--output"] = (args.output, "model.safetensors")
        sidecar = str(sidecar_path(args.output))
        outputs["-o/--output (its sidecar)"] = (sidecar, "model.safetensors.json")
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
    # After the checks of the path itself: a folder or a device given as -o is named as such.
    if args.output and Path(args.output).suffix != ".safetensors":
        raise OptionError(
            f"-o/--output {printable(args.output)}: grafted weights are written as "
            f"safetensors; give a file name ending in .safetensors (e.g. "
            f"{printable(Path(args.output).with_suffix('.safetensors').name)})"
        )


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
        later.append(f"write {printable(out)} and {printable(sidecar_path(out))}")
    if later:
        print(
            f"dry run: nothing was loaded or written; without --dry-run this would also "
            f"{' and '.join(later)}",
            file=sys.stderr if args.json else sys.stdout,
        )


def _said_plan(path: Path | None, args: argparse.Namespace) -> None:
    """Where ``--plan-out`` wrote, after the table (on stderr under ``--json``)."""
    if path is not None:
        again = printable(shlex.quote(str(path)))
        print(
            f"wrote the plan to {printable(path)}; edit it, then apply it with --plan {again}",
            file=sys.stderr if args.json else sys.stdout,
        )
