"""Fuzz the checkpoint reader, the matcher, the config validation, run directories, config text
and training data at volume.

The cases are the ones the default suite draws a hundred or two at a time, here by the
thousand with a fresh seed each run:

- ``--reader N`` (tests/security/test_fuzz_reader.py): random and damaged checkpoint files,
  read in sandboxed child processes (memory limit, per-case alarm, wall-clock limit per
  batch); allowed: tensors or a ``CheckpointError`` naming the file;
- ``--matcher N``, ``--config N`` (tests/security/test_fuzz_plans.py): random state_dicts
  and rules into ``tg.plan_graft``, random nested mappings into ``tg.load_config``, in this
  process; allowed: a plan or a typed error, a config or a ``ConfigError``;
- ``--run-dir N`` (tests/security/test_fuzz_runs.py): copies of a real finished run with
  their files damaged (documents edited, records and resume states re-saved with wrong
  types and recomputed hashes, bytes flipped, special files), read by ``tg.load``,
  ``read_model_document``, ``load_state``, ``write_report``, prediction, resume and export;
  allowed: a result or a torchgraft error;
- ``--config-text N`` (tests/security/test_fuzz_config_text.py): YAML text (anchors, merge
  keys, tags, huge scalars, encodings, deep nesting, damage) and dotted overrides, through
  ``load_config`` and ``torchgraft train --print-config``; allowed: a config / exit 0, or a
  ``ConfigError`` / exit 2 without a traceback;
- ``--data N`` (tests/security/test_fuzz_data.py): folders and CSVs of valid and damaged
  images in every format and mode, special files, links and odd names, through
  ``discover``, ``prepare_data``, a batch of the loader and ``load_image``; allowed: data or
  a ``DataError``.

The last three run their cases in forked children, ``--case-batch`` cases drawn per seed
(``SEED + first case``), each case under a memory limit, an alarm and a kill for a hang (see
``reader_forge.sandboxed_cases``). A count of 0 skips a target.

    nice -n 10 python bench/fuzz.py --reader 10000 --matcher 2000 --config 2000
    nice -n 10 python bench/fuzz.py --reader 0 --matcher 0 --config 0 \\
        --run-dir 2000 --config-text 2000 --data 2000 --seed 20261207

Prints, per target, the case count, the duration, the outcomes and every finding (a case that
escaped as another exception, hung, crashed its process, grew memory past its bound, or was
refused without naming the file), with the command that replays it in this process:

    python bench/fuzz.py --replay data:SEED:INDEX --case-batch 200

Exits 1 when there is a finding.
"""

from __future__ import annotations

import argparse
import functools
import re
import sys
import tempfile
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "security")]

import test_fuzz_config_text as config_text  # noqa: E402
import test_fuzz_data as data  # noqa: E402
import test_fuzz_plans as plans  # noqa: E402
import test_fuzz_reader as reader  # noqa: E402
import test_fuzz_runs as runs  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402

#: The targets whose cases run in sandboxed children: (strategy, the check's module).
SANDBOXED = {
    "run-dir": (runs.RUN_CASES, runs),
    "config-text": (config_text.CONFIG_TEXT_CASES, config_text),
    "data": (data.DATA_CASES, data),
}


def run_in_process(strategy, check, count: int, seed: int) -> tuple[dict[str, int], list[str]]:
    counts: dict[str, int] = {}
    findings: list[str] = []

    @settings(
        max_examples=count, database=None, deadline=None, suppress_health_check=list(HealthCheck)
    )
    @given(strategy)
    def one(case):
        try:
            outcome = check(case)
        except Exception as exc:  # a finding: anything but the typed errors `check` catches
            findings.append(f"{exc!r} for {case!r}"[:600] + "\n" + traceback.format_exc(limit=-3))
            return
        counts[outcome] = counts.get(outcome, 0) + 1

    one()
    return counts, findings


def run_reader(count: int, seed: int, batch: int) -> tuple[dict[str, int], list[str]]:
    counts: dict[str, int] = {}
    findings: list[str] = []
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        for first in range(0, count, batch):
            size = min(batch, count - first)
            cases = reader.collect(reader.READER_CASES, size, seed=seed + first)
            got, found = reader.read_in_sandbox(cases, Path(folder) / str(first))
            elapsed = time.perf_counter() - start
            print(f"  reader batch {first}: {len(cases)} cases, {elapsed:.0f} s", flush=True)
            for key, value in got.items():
                counts[key] = counts.get(key, 0) + value
            findings += found
    return counts, findings


def run_sandboxed(name: str, count: int, seed: int, batch: int, folder: Path):
    """``count`` cases of a sandboxed target, ``batch`` drawn per seed."""
    strategy, module = SANDBOXED[name]
    check = _checker(name, folder)
    counts: dict[str, int] = {}
    findings: list[str] = []
    start = time.perf_counter()
    for first in range(0, count, batch):
        size = min(batch, count - first)
        cases = reader.collect(strategy, size, seed=seed + first)
        got, found = module.forge.sandboxed_cases(cases, check, **_limits(name))
        for key, value in got.items():
            counts[key] = counts.get(key, 0) + value
        replay = f"python bench/fuzz.py --replay {name}:{seed + first}:{{}} --case-batch {size}"
        findings += [f"{replay.format(f.split(':')[0].split()[1])}\n  {f}" for f in found]
        elapsed = time.perf_counter() - start
        print(f"  {name} cases {first}-{first + size - 1}: {elapsed:.0f} s, "
              f"{len(findings)} findings so far", flush=True)  # fmt: skip
    return counts, findings


def group_findings(findings: list[str]) -> dict[str, list[str]]:
    """Findings by kind: the exception and the innermost frame it came from, or what
    happened (a hang, a crash, memory) — one bug found many times is one kind."""
    groups: dict[str, list[str]] = {}
    for finding in findings:
        what = finding.split("\n", 1)[1].split(": ", 1)[1]
        if what.startswith("escaped: "):
            first = what.split("\n", 1)[0].removeprefix("escaped: ")
            ours = re.search(r" \(in (torchgraft/[^)]*)\)$", first)
            frames = re.findall(r'File "([^"]+)", line (\d+)', what)
            where = ours.group(1) if ours else ":".join(frames[-1]) if frames else "?"
            kind = f"{first.split(':')[0]} in {where}"
        else:
            kind = re.sub(r"\d+", "N", what.split("\n", 1)[0])[:120]
        groups.setdefault(kind, []).append(finding)
    return groups


def _limits(name: str) -> dict:
    seconds = 20 if name == "config-text" else 60
    return {"case_seconds": seconds, "peak_mb": data.PEAK_MB if name == "data" else 1024}


@functools.cache
def _base_run(folder: Path) -> runs.BaseRun:
    return runs.make_base_run(folder / "base-run")


def _checker(name: str, folder: Path):
    if name == "run-dir":
        return functools.partial(runs.check, base=_base_run(folder))
    return SANDBOXED[name][1].check


def replay(spec: str, batch: int) -> int:
    """Run one case of a sandboxed target in this process, with its traceback."""
    name, seed, index = spec.rsplit(":", 2)
    cases = reader.collect(SANDBOXED[name][0], batch, seed=int(seed))
    case = cases[int(index)]
    print(f"{name} case {index} of seed {seed}: {case!r}", flush=True)
    with tempfile.TemporaryDirectory() as folder:
        print("outcomes:", _checker(name, Path(folder))(case))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader", type=int, default=10_000)
    parser.add_argument("--matcher", type=int, default=2_000)
    parser.add_argument("--config", type=int, default=2_000)
    parser.add_argument("--run-dir", type=int, default=2_000)
    parser.add_argument("--config-text", type=int, default=2_000)
    parser.add_argument("--data", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--batch", type=int, default=1_000, help="reader cases per child process")
    parser.add_argument(
        "--case-batch", type=int, default=200, help="run-dir/config-text/data cases per seed"
    )
    parser.add_argument("--replay", metavar="TARGET:SEED:INDEX", help="run one case, unsandboxed")
    args = parser.parse_args()
    if args.replay:
        return replay(args.replay, args.case_batch)
    print(f"seed {args.seed}", flush=True)
    total = 0
    targets = [
        ("reader", args.reader),
        ("matcher", args.matcher),
        ("config", args.config),
        ("run-dir", args.run_dir),
        ("config-text", args.config_text),
        ("data", args.data),
    ]
    with tempfile.TemporaryDirectory() as folder:
        for name, count in targets:
            if not count:
                continue
            start = time.perf_counter()
            if name == "reader":
                counts, findings = run_reader(count, args.seed, args.batch)
            elif name == "matcher":
                counts, findings = run_in_process(
                    plans.MATCHER_CASES, plans.plan_or_typed_error, count, args.seed
                )
            elif name == "config":
                counts, findings = run_in_process(
                    plans.CONFIGS, plans.config_or_config_error, count, args.seed
                )
            else:
                counts, findings = run_sandboxed(
                    name, count, args.seed, args.case_batch, Path(folder)
                )
            seconds = time.perf_counter() - start
            cases = (
                count if name in SANDBOXED else sum(counts.values()) + len(findings)
            )  # sandboxed targets count several outcomes per case
            print(f"{name}: {cases} cases in {seconds:.0f} s, findings {len(findings)}")
            for key in sorted(counts):
                print(f"  {counts[key]:>7,}  {key}")
            for finding in findings if name not in SANDBOXED else []:
                print("  finding:", finding)
            for kind, group in group_findings(findings).items() if name in SANDBOXED else ():
                print(f"  {len(group)} finding(s): {kind}")
                print("    replay:", *(f.split("\n", 1)[0] for f in group[:3]), sep="\n      ")
                print("    the first in full:", group[0].split("\n", 1)[1][:6000])
            sys.stdout.flush()
            total += len(findings)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
