"""Benchmark grafting: time of ``auto`` and peak memory on a ≥ 300M-parameter checkpoint.

Run: ``python bench/graft.py [--only matching|pairs|check|identify]`` (writes the
"Grafting", "Grafting across libraries", "Grafting: checked before loading" and
"Identification" sections of docs/benchmarks.md; ``pairs`` is :mod:`graft_pairs`, every
torchvision classifier with a timm twin in five forms; ``check`` is :func:`time_check`;
``identify`` is :mod:`identification`).

1. Matching time on real state_dicts of 150–1,000 tensors, in two situations: names equal
   (the common case; prefix stripping and exact names) and names AND order both differ
   (every module renamed, keys sorted as safetensors stores them; the structural matcher).
2. Memory on a ≥ 300M-parameter checkpoint: ``tg.graft`` from a torch zip file (memory
   mapped) against the usual ``model.load_state_dict(torch.load(path))``, each in a fresh
   process, measuring the peak of anonymous resident memory (the memory a second copy of
   the weights would take; mapped file pages are the page cache, not a copy).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

from _report import write_section  # noqa: E402

#: (spec, description) pairs spanning 150–1,000 state_dict entries.
MODELS = (
    "torchvision:vit_b_16",
    "torchvision:resnet50",
    "timm:tf_efficientnet_lite0",
    "torchvision:convnext_tiny",
    "torchvision:efficientnet_b3",
    "torchvision:densenet121",
    "torchvision:densenet201",
)
BIG_MODEL = "torchvision:vit_l_16"


def renamed_sorted(state: dict, keep_numbers: bool = True) -> tuple[dict, dict]:
    """Every module name rewritten in another convention, keys sorted by the new names.

    With ``keep_numbers`` the letters are replaced by a random token and the numbers kept,
    as conventions keep ``layer1``/``blocks.3``; without, every name that is not a bare
    index becomes a random token, destroying all order information in the names.
    """
    rng = random.Random(0)
    names: dict[str, str] = {}

    def random_token() -> str:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(6))

    def token(part: str) -> str:
        if part.isdigit():
            return part
        if not keep_numbers:
            return names.setdefault(part, random_token())
        letters = re.sub(r"\d+", "", part)
        if letters not in names:
            names[letters] = random_token()
        return re.sub(r"[^\d]+", names[letters], part, count=1).replace(letters, "")

    mapping = {}
    for key in state:
        *modules, role = key.split(".")
        mapping[key] = ".".join([*(token(p) for p in modules), role])
    renamed = {mapping[k]: v for k, v in state.items()}
    return dict(sorted(renamed.items())), mapping


def time_matching() -> list[list[str]]:
    import torchgraft as tg
    from torchgraft.grafting.graft_plan import percent

    rows = []
    for spec in MODELS:
        target = tg.create_model(spec)
        state = target.state_dict()
        row = [spec, str(len(state))]
        cases = [(dict(state), None), renamed_sorted(state), renamed_sorted(state, False)]
        for source, expect in cases:
            start = time.perf_counter()
            plan = tg.plan_graft(target, source)
            elapsed = time.perf_counter() - start
            if expect is not None:
                paired = {e.target: e for e in plan.entries if e.source and e.action.loads}
                unpaired = sum(k not in paired for k in state)
                unproven = sum(not e.certain for e in paired.values())
                wrong = sum(e.certain and e.source != expect[k] for k, e in paired.items())
                row.append(
                    f"{elapsed * 1000:.0f} ms ({percent(plan.coverage)}; {unproven} unproven, "
                    f"{unpaired} unpaired, {wrong} wrong)"
                )
            else:
                row.append(f"{elapsed * 1000:.0f} ms ({percent(plan.coverage)})")
        rows.append(row)
        print(" | ".join(row), flush=True)
    return rows


MEMORY_CHILD = r"""
import json, sys, threading, time, torch
import torchgraft as tg
mode, path = sys.argv[1], sys.argv[2]

peak = {"anon": 0}
def anon_kib():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1])
    return 0
def sample():
    while True:
        peak["anon"] = max(peak["anon"], anon_kib())
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()

model = tg.create_model(sys.argv[3])
time.sleep(0.05)
before = anon_kib()
peak["anon"] = before
start = time.perf_counter()
if mode == "torchgraft":
    tg.graft(model, path)
else:
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
elapsed = time.perf_counter() - start
time.sleep(0.05)
params = sum(p.numel() for p in model.parameters())
print(json.dumps({"model_mib": before / 1024, "peak_extra_mib": (peak["anon"] - before) / 1024,
                  "seconds": elapsed, "params": params}))
"""


def measure_memory() -> list[list[str]]:
    import torch

    import torchgraft as tg

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "big.pt")
        model = tg.create_model(BIG_MODEL)
        torch.save(model.state_dict(), path)
        size = os.path.getsize(path) / 2**20
        del model
        rows = []
        for mode in ("load_state_dict(torch.load)", "torchgraft"):
            flag = "torchgraft" if mode == "torchgraft" else "baseline"
            out = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, flag, path, BIG_MODEL],
                capture_output=True,
                text=True,
                check=True,
            )
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(
                [
                    mode,
                    f"{result['params'] / 1e6:.0f}M",
                    f"{size:.0f} MiB",
                    f"{result['model_mib']:.0f} MiB",
                    f"{result['peak_extra_mib']:.0f} MiB",
                    f"{result['seconds']:.1f} s",
                ]
            )
            print(" | ".join(rows[-1]), flush=True)
    return rows


#: (source spec, target timm name) for the cost of checking a graft before loading.
CHECKED = (("torchvision:resnet50", "resnet50"), ("torchvision:convnext_tiny", "convnext_tiny"))


def time_check(rounds: int = 3) -> list[str]:
    """The time ``tg.graft`` spends running the graft against the source architecture before
    loading: the same graft with the check and with ``verify=False``, alternating, in this
    process (median of ``rounds``)."""
    import statistics

    import timm

    import torchgraft as tg

    rows = []
    for spec, name in CHECKED:
        source = tg.create_model(spec).eval()
        state = {k: v.detach().clone() for k, v in source.state_dict().items()}
        params = sum(p.numel() for p in source.parameters())
        times: dict[bool, list[float]] = {True: [], False: []}
        for _ in range(rounds):
            for verify in (True, False):
                target = timm.create_model(name, pretrained=False).eval()
                started = time.perf_counter()
                tg.graft(target, state, source_model=source, verify=verify)
                times[verify].append(time.perf_counter() - started)
                del target
        checked, plain = (statistics.median(times[v]) for v in (True, False))
        rows.append(
            f"| {spec} → timm:{name} | {params / 1e6:.1f} M | {plain:.2f} s | {checked:.2f} s "
            f"| **{checked - plain:+.2f} s** |"
        )
        print(rows[-1], flush=True)
        del source, state
    return rows


def write_check() -> None:
    rows = time_check()
    body = [
        "`tg.graft(model, weights, source_model=...)` runs the graft against the source",
        "architecture before loading (a copy of the target, the source architecture loaded with",
        "the weights, both on one probe batch of 2 images at the model's input size). The same",
        "graft with `verify=False` beside it, alternating, in one process; medians of 3 rounds.",
        "The budget (issue 20) is 2 s extra for a ResNet-50-sized model on this CPU.",
        "",
        "| graft | parameters | without the check | with it | extra |",
        "|---|---|---|---|---|",
        *rows,
    ]
    write_section("Grafting: checked before loading", "python bench/graft.py --only check", body)


def main() -> None:
    import argparse

    parser = argparse.ArgumentParser(description="grafting benchmarks")
    parser.add_argument(
        "--only", choices=("matching", "pairs", "check", "identify"), action="append"
    )
    parser.add_argument(
        "--with-build", action="store_true", help="identify: also without the shipped tables"
    )
    arguments = parser.parse_args()
    parts = arguments.only or ("matching", "pairs", "check", "identify")
    if "identify" in parts:
        import identification

        body = identification.section(with_build=arguments.with_build)
        write_section("Identification", "python bench/graft.py --only identify", body)
    if "check" in parts:
        write_check()
    if "matching" in parts:
        write_matching()
    if "pairs" in parts:
        import graft_pairs

        method = graft_pairs.__doc__.split("\n\n", 2)[2]  # after the title and "Run:"
        body = [*method.split("\n"), "", *graft_pairs.main([])]
        write_section("Grafting across libraries", "python bench/graft.py --only pairs", body)


def write_matching() -> None:
    timing = time_matching()
    memory = measure_memory()
    body = [
        "Matching time of `tg.plan_graft(model, source)` (strategy `auto`) on real state_dicts.",
        "*Names equal*: the source is the model's own state_dict. *Renamed + sorted*: the letters",
        "of every module name replaced by a random token, numbers kept (`layer1` → `qzkfjw1`), keys",
        "sorted by the new names as safetensors stores them — names and order both differ.",
        "*Random names + sorted*: every name that is not a bare index replaced by an unrelated",
        "token, so nothing in the names tells same-shaped siblings apart. *Unproven*: paired on",
        "evidence below full confidence (a graft refuses them unless accepted); *unpaired*: left",
        "unloaded (ambiguous); *wrong*: paired at full confidence, differently from the truth —",
        "the failure a user cannot see, which must stay 0. The weights are freshly initialised",
        "(no BatchNorm statistics to settle anything with) and no source architecture is given.",
        "",
        "| model | tensors | names equal | renamed + sorted | random names + sorted |",
        "|---|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in timing),
        "",
        f"Memory of loading a {BIG_MODEL} checkpoint (torch zip file), each in a fresh process:",
        "peak anonymous memory beyond the model itself (a second copy of the weights would show",
        "here; memory-mapped file pages are page cache and are not counted).",
        "",
        "| loader | params | file | model | peak extra | time |",
        "|---|---|---|---|---|---|",
        *("| " + " | ".join(r) + " |" for r in memory),
    ]
    write_section("Grafting", "python bench/graft.py", body)


if __name__ == "__main__":
    main()
