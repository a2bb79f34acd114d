"""The docs run: code blocks in README.md and docs/*.md cannot drift from the code.

A fenced block preceded by the line ``<!-- test: run -->`` is executed: python blocks of one
file in order, in one namespace (like a notebook), bash blocks with ``bash -euo pipefail``,
all in a fresh folder holding ``photos/`` (three classes of real PNG digits) and a copy of
``configs/``. Every other
python block must at least compile.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import TESTS, write_digit_folder

ROOT = TESTS.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARK = "<!-- test: run -->"
FENCE = re.compile(r"^```(\w+)\n(.*?)^```", re.S | re.M)


def blocks(path: Path):
    """``(language, code, runnable, line)`` for every fenced block of ``path``."""
    text = path.read_text()
    for match in FENCE.finditer(text):
        before = text[: match.start()].rstrip().splitlines()
        runnable = bool(before) and before[-1].strip() == MARK
        yield match.group(1), match.group(2), runnable, text[: match.start()].count("\n") + 1


RUNNABLE = [p for p in DOCS if any(run for _, _, run, _ in blocks(p))]


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_python_block_compiles(path):
    for language, code, _, line in blocks(path):
        if language == "python":
            compile(code, f"{path.name}:{line}", "exec")


def test_the_docs_have_runnable_examples():
    names = {p.name for p in RUNNABLE}
    assert {"README.md", "training.md", "cookbook.md"} <= names


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNABLE, ids=lambda p: p.name)
def test_marked_blocks_run(path, tmp_path, monkeypatch):
    write_digit_folder(tmp_path / "photos", per_class=8, size=32)
    shutil.copytree(ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    namespace: dict = {"__name__": "__doc_example__"}
    for language, code, runnable, line in blocks(path):
        if not runnable:
            continue
        where = f"{path.name}:{line}"
        if language == "python":
            exec(compile(code, where, "exec"), namespace)
        elif language == "bash":
            done = subprocess.run(
                ["bash", "-euo", "pipefail", "-c", code],
                capture_output=True,
                text=True,
                env=env,
                timeout=900,
            )
            assert done.returncode == 0, f"{where} failed:\n{done.stdout}\n{done.stderr}"
        else:
            pytest.fail(f"{where}: cannot run a {language} block")
