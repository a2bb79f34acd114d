"""The embedded default run (`torchgraft train`, no arguments), measured as users run it.

Run: ``python bench/main_job.py [--seeds 0 1 2] [--threads-check]`` (writes the "Main job"
section of docs/benchmarks.md).

Each run is a fresh process of the installed console script, in an empty folder, with only
``--train.seed`` changed. Figures per seed: wall time from process start to exit, the best
validation top-1 (model.json), and the process's peak resident memory (``os.wait4``'s
``ru_maxrss`` of that child alone). ``--threads-check`` also runs seed 0 with
``--train.threads 1`` beside the default (torch's one thread per core): the measurement
behind the default thread count.

Bars (issue 7): wall ≤ 180 s (target ≤ 120 s), top-1 ≥ 97 % on every seed (target ≥ 98.5 %),
peak RSS ≤ 2 GiB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import cpu_line, write_section  # noqa: E402


def console_script() -> str:
    found = shutil.which("torchgraft") or str(Path(sys.executable).parent / "torchgraft")
    if not Path(found).exists():
        sys.exit("install torchgraft first (pip install -e .)")
    return found


def run_once(arguments: list[str]) -> dict:
    """One `torchgraft train` process: wall seconds, best val top-1, peak RSS, epochs."""
    folder = Path(tempfile.mkdtemp(prefix="torchgraft-main-job-"))
    try:
        started = time.perf_counter()
        process = subprocess.Popen(
            [console_script(), "train", *arguments],
            cwd=folder,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        _, status, usage = os.wait4(process.pid, 0)
        wall = time.perf_counter() - started
        stderr = process.stderr.read().decode()
        process.stderr.close()
        if os.waitstatus_to_exitcode(status) != 0:
            sys.exit(f"torchgraft train {' '.join(arguments)} failed:\n{stderr}")
        run_dir = next((folder / "runs").iterdir())
        document = json.loads((run_dir / "model.json").read_text())
        return {
            "wall": wall,
            "acc1": document["metrics"]["acc1"],
            "rss_mib": usage.ru_maxrss / 1024,  # Linux reports KiB
            "epoch": document["epoch"] + 1,
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--threads-check", action="store_true")
    options = parser.parse_args()
    rows = []
    for seed in options.seeds:
        result = run_once(["--train.seed", str(seed)])
        rows.append((f"seed {seed}", result))
        print(f"seed {seed}: {result}", flush=True)
    if options.threads_check:
        result = run_once(["--train.seed", "0", "--train.threads", "1"])
        rows.append(("seed 0, 1 thread", result))
        print(f"seed 0, 1 thread: {result}", flush=True)
    body = [
        "`torchgraft train` with no arguments, each run a fresh process of the installed",
        "console script (process start to exit). Best validation top-1 from model.json; peak",
        "RSS of that process. Bars: ≤ 180 s (target ≤ 120 s), ≥ 99 % every seed (issue 19),",
        "≤ 2 GiB.",
        "",
        cpu_line(len(os.sched_getaffinity(0)), "torch's default threads: one per core"),
        "",
        "| run | wall time | val top-1 | best epoch | peak RSS |",
        "|---|---|---|---|---|",
    ]
    body += [
        f"| {label} | {r['wall']:.1f} s | {r['acc1']:.2%} | {r['epoch']} | {r['rss_mib']:.0f} MiB |"
        for label, r in rows
    ]
    seeds = [r for label, r in rows if "thread" not in label]
    body += [
        "",
        f"Worst of {len(seeds)} seeds: {max(r['wall'] for r in seeds):.1f} s, "
        f"{min(r['acc1'] for r in seeds):.2%}, {max(r['rss_mib'] for r in seeds):.0f} MiB.",
    ]
    write_section("Main job", " ".join(["python bench/main_job.py", *sys.argv[1:]]), body)


if __name__ == "__main__":
    main()
