"""Fuzz the checkpoint reader, the matcher and the config validation at volume.

The cases are the ones the default suite draws 200 at a time (tests/security/test_fuzz_reader.py
and test_fuzz_plans.py), here by the thousand with a fresh seed each run: reader cases are read
in sandboxed child processes (memory limit, per-case alarm, wall-clock limit per batch);
matcher and config cases run in this process and may raise only torchgraft's typed errors.

    nice -n 10 python bench/fuzz.py --reader 10000 --matcher 2000 --config 2000

Prints, per target, the case count, the duration, the outcomes and every finding (a case that
escaped as another exception, hung, crashed its process or was refused without naming the file).
Exits 1 when there is a finding.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
import traceback
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1] / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "security")]

import test_fuzz_plans as plans  # noqa: E402
import test_fuzz_reader as reader  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reader", type=int, default=10_000)
    parser.add_argument("--matcher", type=int, default=2_000)
    parser.add_argument("--config", type=int, default=2_000)
    parser.add_argument("--seed", type=int, default=int(time.time()))
    parser.add_argument("--batch", type=int, default=1_000, help="reader cases per child process")
    args = parser.parse_args()
    print(f"seed {args.seed}", flush=True)
    total = 0
    for name, count in (
        ("reader", args.reader),
        ("matcher", args.matcher),
        ("config", args.config),
    ):
        if not count:
            continue
        start = time.perf_counter()
        if name == "reader":
            counts, findings = {}, []
            with tempfile.TemporaryDirectory() as folder:
                for first in range(0, count, args.batch):
                    size = min(args.batch, count - first)
                    cases = reader.collect(reader.READER_CASES, size, seed=args.seed + first)
                    got, found = reader.read_in_sandbox(cases, Path(folder) / str(first))
                    elapsed = time.perf_counter() - start
                    print(
                        f"  reader batch {first}: {len(cases)} cases, {elapsed:.0f} s", flush=True
                    )
                    for key, value in got.items():
                        counts[key] = counts.get(key, 0) + value
                    findings += found
        elif name == "matcher":
            counts, findings = run_in_process(
                plans.MATCHER_CASES, plans.plan_or_typed_error, count, args.seed
            )
        else:
            counts, findings = run_in_process(
                plans.CONFIGS, plans.config_or_config_error, count, args.seed
            )
        seconds = time.perf_counter() - start
        cases = sum(counts.values()) + len(findings)
        print(
            f"{name}: {cases} cases in {seconds:.0f} s, outcomes {counts}, findings {len(findings)}"
        )
        for finding in findings:
            print("  finding:", finding)
        sys.stdout.flush()
        total += len(findings)
    return 1 if total else 0


if __name__ == "__main__":
    sys.exit(main())
