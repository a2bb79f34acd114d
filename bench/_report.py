"""Shared by the benchmark scripts: replace one section of docs/benchmarks.md in place."""

from __future__ import annotations

import datetime
import platform
import re
from pathlib import Path

import torch

DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md"
HEADER = (
    "# Benchmarks\n\n"
    "Measured side by side in one run by the scripts in `bench/`; each section says which\n"
    "script wrote it and on what machine. Figures are ratios or absolute numbers from that\n"
    "run, not targets.\n"
)


def machine() -> str:
    cores = torch.get_num_threads()
    return f"{platform.machine()}, {cores} threads, torch {torch.__version__}, Python {platform.python_version()}"


def write_section(title: str, command: str, body: list[str]) -> None:
    """Write ``## title`` (replacing an older one) with the command and machine line."""
    text = DOC.read_text() if DOC.exists() else HEADER
    stamp = datetime.date.today().isoformat()
    section = "\n".join([f"## {title}", "", f"`{command}` — {stamp}, {machine()}", "", *body, ""])
    pattern = re.compile(rf"^## {re.escape(title)}\n.*?(?=^## |\Z)", re.S | re.M)
    text = (
        pattern.sub(section + "\n", text)
        if pattern.search(text)
        else text.rstrip() + "\n\n" + section
    )
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(text)
    print(f"wrote section '{title}' of {DOC}")


def cpu_line(threads: int, how: str = "") -> str:
    """The CPU's name and the flags that decide torch's CPU kernels (bf16 among them)."""
    info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln), "")
    flags = next(
        (set(ln.split(":", 1)[1].split()) for ln in info.splitlines() if ln.startswith("flags")),
        set(),
    )
    marks = ", ".join(
        f"{flag} {'yes' if flag in flags else 'no'}"
        for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
    )
    return (
        f"CPU: {name or platform.processor()}, {threads} cores for this run"
        f"{f' ({how})' if how else ''}; "
        f"{marks}."
    )
