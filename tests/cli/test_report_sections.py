"""``torchgraft report`` as users run it, for its two image sections: a tiny run whose model
gets some validation images wrong (TinyCNN after one epoch), checked against an
independent oracle (``tg.predict`` on the same files)."""

from __future__ import annotations

import html
import itertools
import re

import pytest

import torchgraft as tg
from support import run_cli, tiny_config, write_digit_folder
from torchgraft.data.sources import discover
from torchgraft.engine.console import RunConsole


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("report-sections")
    images = write_digit_folder(root / "digits")
    config = tiny_config(images, root / "runs", train={"epochs": 1})
    return tg.fit(config, console=RunConsole(quiet=True)).dir


def oracle(run_dir) -> tuple[dict[str, float], dict[str, float]]:
    """``(wrong, right)``: each validation file's probability of its true class, split by
    whether tg.predict's top class is the true one."""
    model = tg.load(run_dir, trust_run=True)
    split = discover(tg.load_config(run_dir / "config.yaml").data.source).splits["val"]
    predictions = tg.predict(model, split.paths, topk=len(model.classes))
    wrong, right = {}, {}
    for path, label, prediction in zip(split.paths, split.labels, predictions, strict=True):
        truth = model.classes[label]
        pool = right if prediction.top[0][0] == truth else wrong
        pool[path.relative_to(split.root).as_posix()] = dict(prediction.top)[truth]
    return wrong, right


def shown(text: str, key: str) -> tuple[str, list[str]]:
    """A section's whole markup and the file names on its captions, in page order."""
    start = text.index(f'<section id="{key}">')
    body = text[start : text.index("</section>", start)]
    return body, [html.unescape(n) for n in re.findall(r"<br>([^<]+)</figcaption>", body)]


@pytest.mark.slow  # a subprocess that imports torch and timm, then runs the model
def test_misclassified_holds_only_wrong_images_worst_first(run_dir, console_script, subprocess_env):
    wrong, right = oracle(run_dir)
    assert wrong, "the tiny run should get some images wrong"
    assert right, "the tiny run should get some images right"
    done = run_cli(
        console_script, "report", run_dir, "--trust-run", "--examples", "3", env=subprocess_env
    )
    assert done.returncode == 0, done.stderr
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    for key, title, pool in (
        ("misclassified", "Misclassified validation images", wrong),
        ("least-confident", "Least confident correct validation images", right),
    ):
        body, names = shown(text, key)
        assert f"<h2>{title}</h2>" in body
        assert len(names) == min(3, len(pool)), key  # --examples 3: at most 3 per section
        assert set(names) <= set(pool), f"{key} shows images of the other kind: {names}"
        ranked = [pool[name] for name in names]
        assert all(a <= b + 1e-5 for a, b in itertools.pairwise(ranked))  # worst first
        rest = [pool[name] for name in pool if name not in names]
        assert max(ranked) <= min(rest, default=1.0) + 1e-5
    body, _ = shown(text, "misclassified")
    assert f"{len(wrong)} of the {len(wrong) + len(right)} validation images" in body
    assert "worst first (the lowest probability given to the true class)" in body
    assert "worst-classified" not in text.lower()
