"""``torchgraft.graft`` & co.: the grafting API, with model specs accepted wherever a source
or a source architecture is.

This is where names meet grafting: a source spec (``torchvision:resnet50``,
``torchvision:resnet50@IMAGENET1K_V1``, ``timm:resnet50.a1_in1k``) becomes the weights its
library downloads, and a source-model spec becomes the architecture, built here; then the
call goes to :mod:`torchgraft.grafting`, which knows only files, state_dicts and modules.

Options are checked here, at the public boundary, before anything is read: ``min_coverage``
outside 0..1 is refused (not compared against a coverage it can never reach), and ``rules``
without ``strategy`` means ``strategy="rules"`` while ``rules`` with another strategy is
refused (it would be ignored).

:func:`graft_into` is ``torchgraft graft`` as one call: a source (a file or a model spec)
into a model spec, planned (or taken from an edited plan file), applied, verified and
written; the command parses its flags, makes this call and prints what comes back.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from ..atomic import landing
from ..checkpoint.read import Checkpoint
from ..checkpoint.write import legacy_graft_sidecar, save_grafted, sha256_file
from ..errors import CheckpointError, GraftError, SpecError
from ..grafting import api
from ..grafting import verify as verification
from ..grafting.exactness import AllowPartial
from ..grafting.graft_plan import GraftPlan, GraftReport
from ..grafting.plan_file import plan_from_file, write_plan_file
from ..grafting.source import Source, SourceWeights, looks_like_spec, read_options, read_source
from ..grafting.verify import Verification
from ..sidecars import sidecar_path
from ..text import printable
from ..wording import in_cli, option
from . import build_model, create_model, identified_architecture

__all__ = [
    "GraftOutcome",
    "graft",
    "graft_into",
    "identified_architecture",
    "names_a_model",
    "plan_graft",
    "resolve_source",
    "resolve_source_model",
    "verify_graft",
]


def resolve_source(source: Source | SourceWeights, **options: Any) -> SourceWeights:
    """Any accepted source, model specs with weights included, read once.

    ``options`` are the reader's (``ema``, ``allow_globals``, ``trust``).

    Raises:
        SpecError: an unknown spec or weights name; CheckpointError: an unreadable file.
    """
    if names_a_model(source):
        return _spec_weights(source)
    if isinstance(source, (str, Path)) and not os.path.lexists(source):
        raise CheckpointError(
            f"{printable(source)}: no such file or folder; give a checkpoint file (.pt, .pth, "
            ".bin, .ckpt, .safetensors) or folder, or a model spec with weights "
            "(torchvision:resnet50, timm:resnet50.a1_in1k)"
        )
    return read_source(source, **options)


def names_a_model(source: Any) -> bool:
    """True when ``source`` is a model spec (``torchvision:resnet50@IMAGENET1K_V1``), not a
    file: text shaped like a spec that names no existing file (a file wins)."""
    return isinstance(source, str) and looks_like_spec(source) and not Path(source).exists()


def _spec_weights(source: str) -> SourceWeights:
    """The weights a model spec's library provides (``@WEIGHTS``, default ``DEFAULT``)."""
    spec, _, weights = source.partition("@")
    built = build_model(spec, weights=weights or "DEFAULT")
    if built.source is None:
        raise SpecError(f"model spec '{source}' carries no weights to graft")
    checkpoint = Checkpoint(dict(built.source), "model-spec", built.source_name or source)
    return SourceWeights(checkpoint, built.spec.classes, tuple(built.source))


def resolve_source_model(source_model: str | nn.Module | None) -> nn.Module | None:
    """A source architecture: a module as it is, a model spec built without weights."""
    if source_model is None or isinstance(source_model, nn.Module):
        return source_model
    return build_model(source_model).model


def plan_graft(
    model: nn.Module, source: Any, *, source_model: str | nn.Module | None = None, **options: Any
) -> GraftPlan:
    """:func:`torchgraft.grafting.plan_graft`, with model specs accepted for ``source`` and
    ``source_model``.

    Example:
        >>> plan = tg.plan_graft(model, "colleague.ckpt", strategy="auto")
        >>> print(plan)
    """
    check_graft_options(options)
    weights = resolve_source(source, **read_options(options))
    options.setdefault("identify", identified_architecture)
    return api.plan_graft(
        model, weights, source_model=resolve_source_model(source_model), **options
    )


def graft(
    model: nn.Module, source: Any, *, source_model: str | nn.Module | None = None, **options: Any
) -> GraftReport:
    """:func:`torchgraft.grafting.graft`, with model specs accepted for ``source`` and
    ``source_model``.

    Example:
        >>> report = tg.graft(model, "colleague.ckpt", strategy="auto")
        >>> report.coverage, report.missing
    """
    check_graft_options(options)
    weights = resolve_source(source, **read_options(options))
    if source_model is not None:
        options["source_model"] = resolve_source_model(source_model)
    options.setdefault("identify", identified_architecture)
    return api.graft(model, weights, **options)


def verify_graft(
    model: nn.Module, source_model: str | nn.Module, source_weights: Any, **options: Any
) -> Verification:
    """:func:`torchgraft.grafting.verify_graft`, with model specs accepted for the source
    architecture and the source weights.

    Example:
        >>> tg.verify_graft(model, "timm:convnext_tiny", "colleague.ckpt").ok
        True
    """
    options.setdefault("source_name", source_model if isinstance(source_model, str) else None)
    return verification.verify_graft(
        model,
        resolve_source_model(source_model),
        resolve_source(source_weights),
        **options,
    )


def check_graft_options(options: dict[str, Any]) -> None:
    """Refuse options that make no sense or would be ignored; ``rules`` alone sets
    ``strategy="rules"`` in ``options``.

    Raises:
        GraftError: ``min_coverage`` is not a fraction from 0 to 1, or ``rules`` were given
            with a strategy that does not use them.
    """
    if "min_coverage" in options:
        api.check_min_coverage(options["min_coverage"])
    if options.get("rules") is not None:
        strategy = options.setdefault("strategy", "rules")
        if strategy != "rules":
            raise GraftError(
                f"{option('rules')} are used only by {option('strategy', 'rules')}, and "
                f"{option('strategy', strategy)} would ignore them; drop {option('strategy')} "
                f"(rules alone mean {option('strategy', 'rules')}) or drop {option('rules')}"
            )


@dataclass(repr=False)
class GraftOutcome:
    """What :func:`graft_into` did.

    Attributes:
        plan: the plan (a dry run), or the report of the graft that ran (a
            :class:`GraftReport`, with the verification and the written files in its notes).
        dry_run: nothing was loaded, and nothing written but the plan file.
        plan_file: where the editable plan was written (absolute), or None.
        verification: the output comparison with the source architecture, when one ran.
        refusals: on a dry run, why the graft itself would be refused (empty: it would load).
        output: the grafted weights written (their JSON sidecar beside them), or None.
    """

    plan: GraftPlan
    dry_run: bool = False
    plan_file: Path | None = None
    verification: Verification | None = None
    refusals: list[str] = field(default_factory=list)
    output: Path | None = None
    #: a failed verification was accepted on purpose (``allow_mismatch``)
    accepted_mismatch: bool = False

    @property
    def ok(self) -> bool:
        """False when the verification failed and was not accepted (then nothing was
        written)."""
        return self.verification is None or self.verification.ok or self.accepted_mismatch

    def __repr__(self) -> str:
        kind = "dry run" if self.dry_run else "graft"
        checked = "" if self.verification is None else f", verified {self.verification.ok}"
        return f"<GraftOutcome {kind}: {self.plan!r}{checked}>"


def graft_into(
    source: str | os.PathLike,
    into: str,
    *,
    num_classes: int | None = None,
    in_chans: int | None = None,
    strategy: str | None = None,
    rules: str | os.PathLike | None = None,
    in_chans_mode: str | None = None,
    plan_file: str | os.PathLike | None = None,
    plan_out: str | os.PathLike | None = None,
    source_model: str | None = None,
    tolerance: float | None = None,
    output: str | os.PathLike | None = None,
    min_coverage: float = api.MIN_COVERAGE,
    allow_partial: AllowPartial = False,
    allow_uncertain: bool = False,
    allow_mismatch: bool = False,
    dry_run: bool = False,
    ema: bool = False,
    allow_globals: Sequence[str] = (),
    trust: bool = False,
    on_step: Callable[[int, int], None] | None = None,
) -> GraftOutcome:
    """Graft ``source`` into a new ``into`` model: plan, apply, verify, write (``torchgraft
    graft``). ``source`` is told apart once (a model spec, or a file) and read once.

    Args:
        source: a checkpoint file or folder, or a model spec with weights
            (``torchvision:resnet50@IMAGENET1K_V1``).
        into: the target's model spec; ``num_classes`` / ``in_chans`` shape its head / stem.
        strategy / rules / in_chans_mode: see :func:`torchgraft.grafting.plan_graft`
            (``rules`` alone mean ``strategy="rules"``; default ``auto``).
        plan_file: an (edited) plan file to apply instead of planning
            (:mod:`torchgraft.grafting.plan_file`).
        plan_out: write the plan there as an editable plan file (also on a dry run).
        source_model: the source architecture's spec: it settles ties while planning, and
            the graft is verified against it (``tolerance``, default
            :data:`~torchgraft.grafting.verify.DEFAULT_TOLERANCE`). Without it, an
            architecture identified from the file while planning is run before loading
            (:mod:`torchgraft.grafting.checked`): a different function is refused.
        output: write the grafted weights there (safetensors, with a JSON sidecar at
            ``<output>.json``: source, sha256 of both files, mapping, report), unless the
            verification failed.
        min_coverage / allow_partial / allow_uncertain / allow_mismatch: see
            :func:`torchgraft.graft` (with ``allow_mismatch`` a failed verification against
            ``source_model`` is reported, and the output written all the same).
        dry_run: plan (and write ``plan_out``), say what the graft would refuse; load nothing.
        ema / allow_globals / trust: the checkpoint reader's (a file ``source`` only).
        on_step: the verification's progress, ``on_step(done, total)``
            (:func:`torchgraft.grafting.verify_graft`); None reports nothing.

    Returns:
        A :class:`GraftOutcome`; a failed verification is ``outcome.ok`` False, not raised.

    Raises:
        GraftError: options that contradict each other or would be ignored, a plan file that
            is not a plan or does not fit, or the graft's own refusals (coverage, exactness).
        SpecError / CheckpointError: an unknown model spec, an unreadable source.

    Example:
        >>> outcome = graft_into("colleague.ckpt", "timm:resnet50", output="grafted.safetensors")
        >>> outcome.plan.coverage, outcome.output
    """
    reading = {"ema": ema, "allow_globals": allow_globals, "trust": trust}
    choices = {"strategy": strategy, "rules": rules, "plan_file": plan_file}
    _check_request(source, choices, reading, tolerance, source_model, min_coverage)
    weights = resolve_source(source, **reading)  # told apart once, read once
    reference = resolve_source_model(source_model)
    model = create_model(into, num_classes=num_classes, in_chans=in_chans)
    if plan_file is not None:
        plan = plan_from_file(model, weights, plan_file, in_chans_mode=in_chans_mode)
    else:
        plan = api.plan_graft(
            model,
            weights,
            strategy=strategy or ("rules" if rules else "auto"),
            rules=rules,
            in_chans_mode=in_chans_mode,
            source_model=reference,
            identify=identified_architecture,
        )
    _check_in_chans_mode_used(plan, in_chans_mode)
    written_plan = write_plan_file(plan, plan_out) if plan_out else None
    acceptance = {"allow_partial": allow_partial, "allow_uncertain": allow_uncertain}
    limit = verification.DEFAULT_TOLERANCE if tolerance is None else tolerance
    if dry_run:
        found = api.refusals(
            plan,
            model,
            weights=weights,
            min_coverage=min_coverage,
            allow_mismatch=allow_mismatch,
            tolerance=limit,
            **acceptance,
        )
        return GraftOutcome(plan, dry_run=True, plan_file=written_plan, refusals=found)
    report = api.graft(
        model,
        weights,
        plan=plan,
        min_coverage=min_coverage,
        allow_mismatch=allow_mismatch,
        verify=reference is None,  # a given source model is verified below, with progress
        tolerance=limit,
        **acceptance,
    )
    result = None
    if reference is not None:
        result = verification.verify_graft(
            model, reference, weights, tolerance=limit, source_name=source_model, on_step=on_step
        )
        report.verification = result.to_dict()
        report.notes.append(str(result))
    outcome = GraftOutcome(
        report, plan_file=written_plan, verification=result, accepted_mismatch=allow_mismatch
    )
    if output and outcome.ok:
        outcome.output = _write_output(output, model, report, weights)
    return outcome


def _check_request(
    source: Any,
    choices: dict[str, Any],
    reading: dict[str, Any],
    tolerance: float | None,
    source_model: str | None,
    min_coverage: float,
) -> None:
    """Refuse what :func:`graft_into` would ignore, before anything is read or built."""
    given = [option(name) for name in ("strategy", "rules") if choices[name]]
    if choices["plan_file"] is not None and given:
        raise GraftError(
            f"{option('plan_file')} gives every pairing itself, so {given[0]} would be "
            "ignored; drop one of them"
        )
    if tolerance is not None and source_model is None:
        raise GraftError(
            f"{option('tolerance')} applies to the output comparison with "
            f"{option('source_model')}; give {option('source_model')} or drop "
            f"{option('tolerance')}"
        )
    strategy = {"strategy": choices["strategy"]} if choices["strategy"] else {}
    check_graft_options({"min_coverage": min_coverage, "rules": choices["rules"], **strategy})
    reader = [option(name) for name, value in reading.items() if value]
    if reader and names_a_model(source):
        many = len(reader) > 1
        raise GraftError(
            f"{' and '.join(reader)} {'apply' if many else 'applies'} to a checkpoint file, "
            f"and {'SOURCE' if in_cli() else 'source'} '{printable(source)}' is a model spec "
            f"(its library loads the weights); drop {'them' if many else 'it'} or give a file"
        )


def _check_in_chans_mode_used(plan: GraftPlan, in_chans_mode: str | None) -> None:
    """``in_chans_mode`` acts only where the first convolutions' input channels differ;
    when none do, it would be silently ignored: refused (before anything is loaded)."""
    if in_chans_mode is None:
        return
    if any((e.adapt or {}).get("kind") == "in_chans" for e in plan.entries):
        return
    raise GraftError(
        f"{option('in_chans_mode', in_chans_mode)} was not used: the first convolutions of "
        "the source and the target take the same number of input channels (change the "
        f"target's with {option('in_chans')}); drop {option('in_chans_mode')}"
    )


def _write_output(
    path: str | os.PathLike, model: nn.Module, report: GraftReport, weights: SourceWeights
) -> Path:
    """The grafted weights as safetensors, with a JSON sidecar at ``<path>.json`` (source and
    its sha256, the target's spec, mapping, report); its folder is created. Noted in the
    report."""
    origin = Path(weights.checkpoint.origin)
    spec = getattr(model, "torchgraft_spec", None)
    sidecar = {
        "source": weights.checkpoint.origin,
        "source_sha256": sha256_file(origin) if origin.is_file() else None,
        "target": spec.to_dict() if spec else None,
        "mapping": report.mapping,
        "report": report.to_dict(),
    }
    path = landing(path)  # a link there is replaced, never written through (torchgraft.atomic)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_grafted(path, model.state_dict(), sidecar)
    report.notes.append(f"wrote {path} and {sidecar_path(path)}")
    old = legacy_graft_sidecar(path)
    if old is not None:  # an older torchgraft's name for it: left alone, but never silently
        report.notes.append(
            f"{old} is the sidecar an earlier torchgraft wrote for {path.name} under the old "
            f"name; it describes the weights that were there before: delete it (the sidecar "
            f"is {sidecar_path(path).name} now)"
        )
    return path
