"""``torchgraft report RUN_DIR`` as users run it: a real subprocess on a tiny run."""

from __future__ import annotations

import re
import subprocess

import pytest

import torchgraft as tg
from support import tiny_config, write_digit_folder
from torchgraft.engine.console import RunConsole

SECTIONS = ["glance", "curves", "confusion", "misclassified", "least-confident", "graft", "policy"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-cmd")
    images = write_digit_folder(root / "digits")
    config = tiny_config(images, root / "runs", train={"epochs": 1})
    return tg.fit(config, console=RunConsole(quiet=True)).dir


def report(console_script, subprocess_env, *args):
    return subprocess.run(
        [*console_script, "report", "--trust-run", *map(str, args)],
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=300,
    )


@pytest.mark.slow  # a subprocess that imports torch and timm, then runs the model
def test_report_regenerates_the_page(run_dir, console_script, subprocess_env):
    page = run_dir / "report.html"
    page.unlink()
    done = report(console_script, subprocess_env, run_dir, "--plots", "--examples", "4")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(page)
    text = page.read_text(encoding="utf-8")
    assert re.findall(r'<section id="([\w-]+)">', text) == SECTIONS
    assert "<script" not in text
    sources = re.findall(r'src="([^"]*)"', text)
    assert all(s.startswith("data:image/png;base64,") for s in sources)
    # the three figures (--plots, although the run had them off), then at most 4 images in
    # each image section; each of the 6 validation images is either wrong or right
    counts = {}
    for key, verdict in (("misclassified", "wrongly"), ("least-confident", "correctly")):
        start = text.index(f'<section id="{key}">')
        body = text[start : text.index("</section>", start)]
        said = re.search(rf"(\d+) of the 6 validation images were classified {verdict}", body)
        counts[key] = int(said[1]) if said else 0
        assert body.count("<figure>") == min(4, counts[key]), key
    assert sum(counts.values()) == 6
    assert len(sources) == 3 + text.count("<figure>")
    assert "No graft" in text  # the tiny run started from random weights


@pytest.mark.parametrize("where", ["empty", "missing"])
def test_a_folder_that_is_not_a_run_is_refused(tmp_path, console_script, subprocess_env, where):
    folder = tmp_path / where
    if where == "empty":
        folder.mkdir()
    done = report(console_script, subprocess_env, folder)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert str(folder) in lines[0]
    assert "give a run directory that torchgraft train created" in lines[0]
    assert not (folder / "report.html").exists()
