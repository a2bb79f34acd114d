"""How long ``torchgraft inspect`` takes to name a checkpoint's architecture.

Run: ``python bench/graft.py --only identify`` (writes the "Identification" section of
docs/benchmarks.md; ``--with-build`` adds one first identification without the shipped
tables, which builds the zoo: minutes).

Each figure is the wall time of a fresh ``torchgraft inspect`` process (what a user waits),
median of 3: *cold* with an empty index cache, *warm* with the cache the cold run left, and
``--no-identify`` beside them (reading and describing the file alone), alternating.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: (label, builder spec, file name): a name-sorted safetensors from timm, and a torch.save
#: state_dict from torchvision.
CHECKPOINTS = (
    ("timm vit_base_patch16_224, safetensors", "timm:vit_base_patch16_224", "vit.safetensors"),
    ("torchvision resnet50, torch.save", "torchvision:resnet50", "resnet50.pth"),
)


def _write(spec: str, path: Path) -> None:
    import torch
    from safetensors.torch import save_file

    import torchgraft as tg

    state = tg.create_model(spec).state_dict()
    if path.suffix == ".safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)


def _inspect(path: Path, cache: Path, *extra: str, tables: str | None = None) -> float:
    env = {**os.environ, "TORCHGRAFT_CACHE_DIR": str(cache), "OMP_NUM_THREADS": "1"}
    env.pop("TORCHGRAFT_IDENTIFY_ARCHS", None)
    if tables is not None:
        env["TORCHGRAFT_TABLES_DIR"] = tables
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "torchgraft", "inspect", str(path), *extra],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    if not extra:
        line = next(x for x in done.stdout.splitlines() if x.startswith("architecture"))
        print(f"  {path.name}: {line[:110]}", flush=True)
    return seconds


def measure(rounds: int = 3, with_build: bool = False) -> list[str]:
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for label, spec, name in CHECKPOINTS:
            path = root / name
            _write(spec, path)
            times: dict[str, list[float]] = {"plain": [], "cold": [], "warm": []}
            for turn in range(rounds):
                cache = root / f"cache-{name}-{turn}"
                times["plain"].append(_inspect(path, cache, "--no-identify"))
                times["cold"].append(_inspect(path, cache))
                times["warm"].append(_inspect(path, cache))
            plain, cold, warm = (statistics.median(times[k]) for k in ("plain", "cold", "warm"))
            rows.append(
                f"| {label} | {plain:.2f} s | **{cold:.2f} s** ({cold - plain:+.2f}) | "
                f"{warm:.2f} s ({warm - plain:+.2f}) |"
            )
            print(rows[-1], flush=True)
        if with_build:
            label, _, name = CHECKPOINTS[0]
            seconds = _inspect(root / name, root / "cache-built", tables="")
            rows.append(
                f"| {label}, without the shipped tables (builds the zoo) | | {seconds:.1f} s | |"
            )
            print(rows[-1], flush=True)
    return rows


def section(with_build: bool = False) -> list[str]:
    rows = measure(with_build=with_build)
    return [
        *__doc__.split("\n\n")[2].split("\n"),
        "",
        "| checkpoint | inspect --no-identify | cold (identification's extra) | warm |",
        "|---|---|---|---|",
        *rows,
    ]
