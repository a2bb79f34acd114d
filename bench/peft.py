"""LoRA and DoRA adapters against full fine-tuning, side by side in one invocation.

Run: ``python bench/peft.py [--seeds 0] [--vit-epochs 3] [--no-write]`` (writes the
"Adapters: LoRA and DoRA" section of docs/benchmarks.md).

Two models, three rows each per seed: full fine-tuning (the recipe's own all-layers stage),
LoRA (configs/lora.yaml: rank 4, alpha 16, targets auto) and DoRA (the same with
``--peft.method dora``). The embedded default is ``torchgraft train`` as it is
(tf_efficientnet_lite0 with its bundled ImageNet weights on the built-in digits, 1 head epoch
on cached features then 5 epochs of every layer, or of the adapters and the head). The ViT is
timm's vit_tiny_patch16_224 built for 64 px on the same digits, from random weights (no
pretrained ViT weights offline), so its accuracy says only that training works, not how well
adapters transfer.

Every run is a fresh process of the installed console script, as in bench/main_job.py: wall
time from process start to exit and the process's peak resident memory (``os.wait4``'s
``ru_maxrss`` of that child alone, every phase of the run included). Each run is made a second
time with its training memory measured (bench/_training_memory.py: the tensors training
holds at its peak, from torch's allocation records over the first all-layers steps; the
profiler's own memory would spoil the first run's RSS), and must reach the same accuracy.
From the run folder: the
best (model.json) and last validation top-1, the trainable share of the last stage
(policy.json: trainable / total, adapters counted in the total), the step time (each
all-layers epoch's training seconds over its optimizer steps, median over those epochs: the
steps per epoch from the resume state's LR trace), and the adapter file against the merged
model file (adapters.safetensors bytes / model.safetensors bytes).

Goal (the issue): the embedded default with LoRA reaches ≥ 98.5 % validation top-1 training
≤ 5 % of the parameters, with a lower peak training memory than full fine-tuning (the
training memory above), and its adapter file is ≤ 5 % of the model file.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# With bench/ on sys.path, ``import peft`` finds this file, not Hugging Face peft: the runs
# here are child processes, and nothing in this process imports torchgraft.adapters.
sys.path.insert(0, str(ROOT / "bench"))

from _report import cpu_line, write_section  # noqa: E402
from main_job import console_script  # noqa: E402
from torchgraft.engine.report.files import read_run  # noqa: E402

LORA = ["--config", str(ROOT / "configs" / "lora.yaml")]
METHODS = {"full": [], "LoRA": LORA, "DoRA": [*LORA, "--peft.method", "dora"]}
#: Built for 64 px: the model takes that size alone, and its spec prepares images at it.
VIT = [
    "--model.name",
    "timm:vit_tiny_patch16_224",
    "--model.kwargs",
    '{"img_size": 64}',
    "--weights.source",
    "null",
    "--graft.verify_with",
    "null",
    "--data.image_size",
    "64",
]
EMBEDDED = "embedded default"
GOAL_ACCURACY, GOAL_SHARE, GOAL_FILE = 0.985, 0.05, 0.05


def train(arguments: list[str], folder: Path) -> dict:
    """The run twice, in two subfolders of ``folder`` (kept): a plain `torchgraft train`
    process (wall seconds, peak RSS, its run's figures) and the same run with its training
    memory measured (bench/_training_memory.py), whose accuracy must be the plain run's."""
    plain, usage, wall = child([console_script(), "train", *arguments], folder / "plain")
    measuring = [sys.executable, str(ROOT / "bench" / "_training_memory.py"), "memory.json"]
    measured, _, _ = child([*measuring, *arguments], folder / "measured")
    run = figures(plain)
    again = figures(measured)
    if again["best"] != run["best"]:
        sys.exit(f"{folder}: measuring the training memory changed the run's accuracy")
    memory = json.loads((measured.parent.parent / "memory.json").read_text())
    return {"wall": wall, "rss_mib": usage.ru_maxrss / 1024, "memory": memory, **run}


def child(command: list[str], folder: Path):
    """Run ``command`` in ``folder``: its run directory, resource usage and wall seconds."""
    folder.mkdir(parents=True)
    started = time.perf_counter()
    with open(folder / "stderr.txt", "wb") as errors:
        process = subprocess.Popen(command, cwd=folder, stdout=subprocess.DEVNULL, stderr=errors)
        _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - started
    if os.waitstatus_to_exitcode(status) != 0:
        text = (folder / "stderr.txt").read_text()
        sys.exit(f"{' '.join(command)} failed:\n{text}")
    return next((folder / "runs").iterdir()), usage, wall


def figures(run_dir: Path) -> dict:
    """What the run folder says: accuracy, trainable share, step time, file sizes."""
    files = read_run(run_dir)
    rows = files.val_rows()
    freeze = files.policies[-1]["freeze"]
    train_rows = [
        r for r in files.rows if r.get("split") == "train" and r.get("stage") == "all layers"
    ]
    steps = (len(files.lr_trace) - files.stage_steps[-1]) / len(train_rows)
    adapters = run_dir / "adapters.safetensors"
    return {
        "best": files.model["metrics"]["acc1"],
        "best_epoch": files.model["epoch"] + 1,
        "last": rows[-1]["acc1"],
        "trainable": freeze["trainable"],
        "total": freeze["total"],
        "step_ms": 1000 * statistics.median(r["seconds"] / steps for r in train_rows),
        "steps": steps,
        "model_bytes": (run_dir / "model.safetensors").stat().st_size,
        "adapter_bytes": adapters.stat().st_size if adapters.exists() else None,
    }


def row(model: str, method: str, seed: int, r: dict, full: dict) -> str:
    file_share = (
        f"{r['adapter_bytes'] / 1024:.0f} KiB / {r['model_bytes'] / 2**20:.1f} MiB = "
        f"{r['adapter_bytes'] / r['model_bytes']:.2%}"
        if r["adapter_bytes"]
        else f"— / {r['model_bytes'] / 2**20:.1f} MiB"
    )
    return (
        f"| {model} | {method} | {seed} | {r['best']:.2%} (epoch {r['best_epoch']}) "
        f"| {r['last']:.2%} | {r['trainable']:,} / {r['total']:,} = "
        f"{r['trainable'] / r['total']:.2%} | {mib(r['memory']['peak'])} "
        f"({r['memory']['peak'] / full['memory']['peak']:.2f}×) | {r['rss_mib']:.0f} MiB "
        f"({r['rss_mib'] / full['rss_mib']:.2f}×) | {r['step_ms']:.0f} ms "
        f"({r['step_ms'] / full['step_ms']:.2f}×) | {r['wall']:.0f} s | {file_share} |"
    )


def peft_import() -> dict:
    """What importing Hugging Face peft costs a process that has imported torch and timm
    (as a run has when it adds adapters): resident MiB, modules and seconds."""
    code = (
        "import json, sys, time, torch, timm\n"
        "def rss():\n"
        "    status = open('/proc/self/status').read()\n"
        "    return int(status.split('VmRSS:')[1].split()[0]) / 1024\n"
        "before, modules, started = rss(), len(sys.modules), time.perf_counter()\n"
        "import peft\n"
        "print(json.dumps({'mib': rss() - before, 'modules': len(sys.modules) - modules,\n"
        "    'seconds': time.perf_counter() - started}))\n"
    )
    # Not from bench/ (where this file would be imported as peft).
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tempfile.gettempdir(),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(out)


def mib(nbytes: int) -> str:
    return f"{nbytes / 2**20:.0f} MiB"


def goal(results: dict) -> list[str]:
    """The issue's goal line, part by part, on every seed of the embedded default."""
    pairs = [(r["LoRA"], r["full"]) for (model, _), r in results.items() if model == EMBEDDED]
    lora = [p[0] for p in pairs]
    parts = [
        (
            f"validation top-1 ≥ {GOAL_ACCURACY:.1%}",
            all(r["best"] >= GOAL_ACCURACY for r in lora),
            ", ".join(f"best {r['best']:.2%} (last {r['last']:.2%})" for r in lora),
        ),
        (
            f"trains ≤ {GOAL_SHARE:.0%} of the parameters",
            all(r["trainable"] / r["total"] <= GOAL_SHARE for r in lora),
            ", ".join(f"{r['trainable'] / r['total']:.2%}" for r in lora),
        ),
        (
            "peak training memory below full fine-tuning",
            all(r["memory"]["peak"] < f["memory"]["peak"] for r, f in pairs),
            ", ".join(
                f"{mib(r['memory']['peak'])} vs {mib(f['memory']['peak'])}" for r, f in pairs
            ),
        ),
        (
            f"adapter file ≤ {GOAL_FILE:.0%} of the model file",
            all(r["adapter_bytes"] / r["model_bytes"] <= GOAL_FILE for r in lora),
            ", ".join(f"{r['adapter_bytes'] / r['model_bytes']:.2%}" for r in lora),
        ),
    ]
    return [f"- {'PASS' if ok else 'FAIL'}: {what} — {numbers}" for what, ok, numbers in parts]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--vit-epochs", type=int, default=3)
    parser.add_argument("--no-write", action="store_true")
    options = parser.parse_args()
    models = {
        EMBEDDED: [],
        "ViT-Tiny 64 px (random init)": [*VIT, "--train.epochs", str(options.vit_epochs)],
    }
    out = Path(tempfile.mkdtemp(prefix="tgpeft-"))
    load_before = os.getloadavg()
    started = time.perf_counter()
    results: dict[tuple[str, int], dict[str, dict]] = {}
    table = [
        "| model | run | seed | val top-1 best | last | trainable (last stage) | training "
        "memory (vs full) | process peak RSS (vs full) | step time (vs full) | wall "
        "| adapters / model file |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for number, (model, base) in enumerate(models.items()):
        for seed in options.seeds:
            runs = results.setdefault((model, seed), {})
            for method, extra in METHODS.items():
                folder = out / f"{number}-{seed}-{method}"
                runs[method] = train([*extra, *base, "--train.seed", str(seed)], folder)
                table.append(row(model, method, seed, runs[method], runs["full"]))
                print(table[-1], flush=True)
    imported = peft_import()
    minutes = (time.perf_counter() - started) / 60
    load_after = os.getloadavg()
    verdicts = goal(results)
    print("\nGoal: embedded default with LoRA ≥ 98.5 % validation top-1 training ≤ 5 % of the")
    print("parameters, with lower peak training memory than full; adapter file ≤ 5 % of model")
    print("\n".join(verdicts))
    print(f"{minutes:.1f} min; load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    if options.no_write:
        return
    steps = {model: round(r["full"]["steps"]) for (model, _), r in results.items()}
    body = [
        "Full fine-tuning against LoRA (configs/lora.yaml: rank 4, alpha 16, targets auto) and",
        "DoRA (the same, `--peft.method dora`), each run a fresh process of the installed",
        "console script. The embedded default is `torchgraft train` as it is: 1 head epoch on",
        "cached features, then 5 epochs of every layer (full) or of the adapters and the head.",
        f"The ViT is timm's vit_tiny_patch16_224 at 64 px (`--model.kwargs '{VIT[3]}'`),",
        "**from random weights** (`--weights.source null`, no pretrained ViT weights offline):",
        "its accuracy shows only that training works, not transfer; "
        f"{options.vit_epochs} epochs, 1 of them head only.",
        "",
        "Val top-1: the best epoch's (model.json) and the last epoch's. Trainable: policy.json's",
        "last stage, trainable / total parameters (the adapters are in the total).",
        "",
        "Training memory: the tensors training holds at its peak — the model's parameters and",
        "buffers, the gradients, the optimizer's state, the activations autograd keeps and each",
        "step's temporaries — measured in a second process of the same run",
        "(bench/_training_memory.py: the first all-layers epoch's first 3 optimizer steps under",
        "torch's profiler with `profile_memory`; the CPU counterpart of",
        "`torch.cuda.max_memory_allocated`; that run's accuracy is checked equal to the first's).",
        "Process peak RSS: `ru_maxrss` of the first process, every phase included (start,",
        "feature cache, training, merge check, report), as in the Main job section. On a CPU at",
        "64 px it is mostly what every run loads before its first step (torch's libraries, the",
        "model and the graft's reference model, the data: about 1.1 GiB) and what glibc's",
        "allocator keeps of freed blocks; its peak often comes after training, while the run writes",
        "its results. An adapter run also imports Hugging Face peft, whose import brings",
        f"transformers with it: {imported['mib']:.0f} MiB resident, {imported['modules']:,}",
        f"modules, {imported['seconds']:.1f} s (measured here, in a process that has imported",
        "torch and timm) — more than LoRA saves in training at this size, which is why its",
        "process peak is not lower. (Sampling /proc/PID/status every 10 ms on 2026-12-08: with",
        "glibc's default the LoRA run's resident memory sat about 50 MiB above full's through",
        "training; with `MALLOC_MMAP_THRESHOLD_=131072`, freed large blocks returned at once and",
        "training 2.5× slower, 15 MiB below: 1221 against 1236 MiB.)",
        "",
        "Step time: each all-layers epoch's",
        "training seconds over its optimizer steps "
        f"({', '.join(f'{n} for the {m}' for m, n in steps.items())}), median over those",
        "epochs. Wall: process start to exit. Adapters / model file: adapters.safetensors",
        "against the merged model.safetensors.",
        "",
        cpu_line(len(os.sched_getaffinity(0)), "torch's default threads: one per core"),
        f"Load average {load_before[0]:.1f} before, {load_after[0]:.1f} after, on "
        f"{len(os.sched_getaffinity(0))} cores; {minutes:.0f} min in all. Times and their",
        "ratios are noisier than the rest; the step-time median the least.",
        "",
        *table,
        "",
        "Goal (the issue): the embedded default with LoRA ≥ 98.5 % validation top-1 training",
        "≤ 5 % of the parameters, with lower peak training memory than full fine-tuning; the",
        "adapter file ≤ 5 % of the model.",
        "",
        *verdicts,
    ]
    command = " ".join(["python bench/peft.py", *sys.argv[1:]])
    write_section("Adapters: LoRA and DoRA", command, body)


if __name__ == "__main__":
    main()
