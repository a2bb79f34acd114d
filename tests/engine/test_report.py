"""report.html: written by train, self-contained, escaped, complete, and robust to missing
files. One tiny run (TinyCNN grafted from a renamed checkpoint, a class named ``<script>``)
is shared by the module; tests that damage files work on copies."""

from __future__ import annotations

import base64
import html.parser
import io
import itertools
import json
import os
import re
import shutil

import pytest
import torch
import yaml
from PIL import Image

import torchgraft as tg
from support import tiny_config, write_digit_folder
from torchgraft.engine.console import RunConsole
from torchgraft.engine.report.files import read_run
from torchgraft.engine.report.graft import MAX_ROWS, MEANING, graft_section
from torchgraft.engine.report.sections import figure
from torchgraft.engine.report.write import write_report
from torchgraft.grafting.correspondence import EVIDENCE

SECTIONS = ["glance", "curves", "confusion", "misclassified", "least-confident", "graft", "policy"]
VOID = {"img", "meta", "br", "hr", "link", "input", "source", "wbr", "col", "area", "base"}
HOSTILE = "<script>"  # a class folder name: must show as text, never become a tag


class Page(html.parser.HTMLParser):
    """Parses a page, checking that every tag is closed in order; collects what it needs."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.sections: list[str] = []
        self.images: list[str] = []
        self.links: list[str] = []
        self.tags: list[str] = []
        self.styles: list[str] = []
        self.text: list[str] = []
        self._in_style = False
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {self.stack}"

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        if tag == "img":
            self.images.append(attrs["src"])
        for name in ("src", "href", "action", "poster", "data"):
            if name in attrs:
                self.links.append(attrs[name])
        if "style" in attrs:
            self.styles.append(attrs["style"])
        self._in_style = tag == "style"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if tag not in VOID:
            self.stack.pop()

    def handle_endtag(self, tag):
        assert self.stack, f"</{tag}> closes nothing"
        assert self.stack[-1] == tag, f"</{tag}> closes {self.stack[-3:]}"
        self.stack.pop()
        self._in_style = False

    def handle_data(self, data):
        (self.styles if self._in_style else self.text).append(data)


def offline(page: Page) -> None:
    """No reference that would fetch anything: only data: URIs, fragments, relative files."""
    for link in page.links:
        assert not re.match(r"\s*([a-z][a-z0-9+.-]*:|//)", link, re.I) or link.startswith(
            "data:image/png;base64,"
        ), link
    for style in page.styles:
        assert "url(" not in style
        assert "@import" not in style
    assert "script" not in page.tags


def decode_png(uri: str) -> Image.Image:
    data = base64.b64decode(uri.removeprefix("data:image/png;base64,"), validate=True)
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG"
    return image


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from handmade_models import TinyCNN

    root = tmp_path_factory.mktemp("report")
    images = write_digit_folder(root / "digits")
    (images / "2").rename(images / HOSTILE)
    source = TinyCNN(num_classes=5).state_dict()
    torch.save({f"model.{k}": v for k, v in source.items()}, root / "colleague.pt")
    config = tiny_config(
        images,
        root / "runs",
        weights={"source": str(root / "colleague.pt")},
    )  # output.plots is off (matplotlib costs seconds here); one test draws the figures
    return tg.fit(config, console=RunConsole(quiet=True)).dir


def copy_run(run_dir, tmp_path):
    return shutil.copytree(run_dir, tmp_path / "run")


def section(text: str, key: str) -> str:
    start = text.index(f'<section id="{key}">')
    return text[start : text.index("</section>", start)]


def test_train_writes_a_self_contained_page_with_every_section(run_dir):
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == SECTIONS
    offline(page)
    # one thumbnail per validation image (2 per class), the figures off as configured
    assert [decode_png(uri).size for uri in page.images] == [(16, 16)] * 6
    assert "output.plots: false" in section(text, "curves")
    words = " ".join(page.text)
    assert "handmade_models:TinyCNN" in words
    assert "colleague.pt" in words
    assert not list(run_dir.glob(".report.html.*"))


def test_the_figures_are_plots_own_embedded_as_png(run_dir, tmp_path):
    work = copy_run(run_dir, tmp_path)
    write_report(work, plots=True, trust_run=True)
    page = Page((work / "report.html").read_text(encoding="utf-8"))
    offline(page)
    sizes = [decode_png(uri).size for uri in page.images]
    # curves, LR schedule and confusion matrix at plots.py's size, then the thumbnails
    assert [s for s in sizes if max(s) > 96] == [(1100, 420), (800, 450), (570, 450)]
    assert len(sizes) == 3 + 6


def test_a_current_figure_on_disk_is_embedded_not_drawn_again(run_dir, tmp_path):
    work = copy_run(run_dir, tmp_path)
    marker = b"\x89PNG\r\n\x1a\n" + b"drawn by train"
    (work / "confusion.png").write_bytes(marker)  # newer than metrics.jsonl: current
    files = read_run(work, lr_trace=False)
    assert figure(files, "confusion.png", draw=None) == marker
    os.utime(work / "confusion.png", ns=(0, 0))  # older than the rows: drawn afresh
    assert figure(files, "confusion.png", draw=None) is None


def test_names_from_the_run_are_escaped(run_dir):
    text = (run_dir / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert "script" not in page.tags
    assert "&lt;script&gt;" in text
    assert HOSTILE in " ".join(page.text)  # shown, as text
    # in the captions too (the class is shown, right or wrong, in one of the two sections)
    images = section(text, "misclassified") + section(text, "least-confident")
    assert "&lt;script&gt;" in images


def test_the_image_sections_hold_the_wrong_and_the_unsure_right_ones(run_dir, tmp_path):
    work = copy_run(run_dir, tmp_path)
    write_report(work, count=3, trust_run=True)
    text = (work / "report.html").read_text(encoding="utf-8")
    names = {
        key: [html.unescape(n) for n in re.findall(r"<br>([^<]+)</figcaption>", section(text, key))]
        for key in ("misclassified", "least-confident")
    }
    # an independent oracle: tg.predict's probabilities of the same validation files
    model = tg.load(run_dir, trust_run=True)
    validation = tg.load_config(run_dir / "config.yaml").data
    from torchgraft.data.sources import discover

    split = discover(validation.source).splits["val"]
    predictions = tg.predict(model, split.paths, topk=len(model.classes))
    wrong, right = {}, {}
    for path, label, prediction in zip(split.paths, split.labels, predictions, strict=True):
        p_true = dict(prediction.top)[model.classes[label]]
        correct = prediction.top[0][0] == model.classes[label]
        (right if correct else wrong)[path.relative_to(split.root).as_posix()] = p_true
    for key, pool in (("misclassified", wrong), ("least-confident", right)):
        shown = names[key]
        assert len(shown) == min(3, len(pool)), key
        assert set(shown) <= set(pool), f"{key} shows images of the other kind"
        ranked = [pool[name] for name in shown]
        rest = [pool[name] for name in pool if name not in shown]
        assert max(ranked, default=0) <= min(rest, default=1) + 1e-5  # the lowest p(true) …
        assert all(a <= b + 1e-5 for a, b in itertools.pairwise(ranked))  # … in order
    if not wrong:
        assert "classified every one of the 6 validation images correctly" in text


def test_missing_and_damaged_files_become_sentences(run_dir, tmp_path):
    work = copy_run(run_dir, tmp_path)
    for name in ("graft.json", "model.json", "model.safetensors"):
        (work / name).unlink()
    shutil.rmtree(work / "state")
    (work / "policy.json").write_text('[{"epoch": 0, "freeze": ', encoding="utf-8")
    write_report(work, trust_run=True)
    text = (work / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == SECTIONS
    assert "graft.json not found" in section(text, "graft")
    assert "no saved model" in section(text, "misclassified")
    assert "no saved model" in section(text, "least-confident")
    assert "policy.json cannot be read" in section(text, "policy")
    glance = section(text, "glance")
    for name in ("graft.json", "model.json", "policy.json", "state/"):
        assert f"<li>{name}: " in glance


def test_moved_data_is_said_instead_of_failing(run_dir, tmp_path):
    work = copy_run(run_dir, tmp_path)
    config = yaml.safe_load((work / "config.yaml").read_text())
    config["data"]["source"] = str(tmp_path / "gone")
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    write_report(work, trust_run=True)
    text = (work / "report.html").read_text(encoding="utf-8")
    for key in ("misclassified", "least-confident"):
        assert "cannot be read now" in section(text, key)
        assert "gone" in section(text, key)


def test_the_cheap_refresh_adds_no_data_pass_and_plots_follow_the_config(run_dir, tmp_path):
    work = copy_run(run_dir, tmp_path)
    write_report(work, final=False, plots=False)
    text = (work / "report.html").read_text(encoding="utf-8")
    assert Page(text).images == []
    assert "end of training" in section(text, "misclassified")
    assert "end of training" in section(text, "least-confident")
    assert "output.plots: false" in section(text, "curves")


def test_a_big_graft_is_grouped_folded_and_bounded(run_dir, tmp_path):
    entries = [
        {
            "target": f"blocks.{b}.{i}.conv.{role}",
            "source": f"_blocks.{b * 100 + i}._conv.{role}",
            "action": "rename",
            "confidence": 1.0,
            "target_shape": [8, 8, 3, 3] if role == "weight" else [8],
            "source_shape": [8, 8, 3, 3] if role == "weight" else [8],
            "evidence": "order",
        }
        for b in range(40)
        for i in range(50)
        for role in ("weight", "bias")
    ]
    entries.append({"target": "head.weight", "source": None, "action": "missing"})
    files = read_run(run_dir, lr_trace=False)
    files.graft = {"strategy": "auto", "coverage": 0.99, "entries": entries, "evidence": {}}
    body = graft_section(files).body
    Page(f"<div>{body}</div>")
    assert body.count("<tr>") <= MAX_ROWS + 60  # data rows, headers and "more" lines
    assert body.count("<details") >= 20  # one fold per block
    assert "more keys not shown" in body
    # weight and bias of one module share a row
    assert "blocks.0.0.conv.{weight, bias}" in body
    assert len(body) < 2_000_000


def test_every_evidence_rung_is_explained():
    assert set(EVIDENCE) <= set(MEANING)


def test_graft_json_is_what_the_section_shows(run_dir):
    graft = json.loads((run_dir / "graft.json").read_text())
    text = section((run_dir / "report.html").read_text(encoding="utf-8"), "graft")
    assert "classifier.1.{bias, weight}" in text  # the new head, left new
    for kind in graft["evidence"]:
        assert f"<td>{kind}</td>" in text
    assert text.count("<details") == 4  # stem, block1, block2, classifier


def test_documents_of_the_wrong_shape_give_a_page_not_a_crash(run_dir, tmp_path):
    work = copy_run(run_dir, tmp_path)
    rows = [
        {"epoch": [1], "split": "val", "confusion": "x", "per_class": [1]},
        {"epoch": True, "split": "train", "loss": "low"},
        {
            "epoch": 0,
            "split": "val",
            "acc1": "high",
            "loss": None,
            "seconds": "1",
            "lr": "fast",
            "confusion": [[1, "a"], 2],
            "per_class": {"<b>": 5},
        },
    ]
    documents = {
        "metrics.jsonl": "".join(json.dumps(r) + "\n" for r in rows) + "{cut",
        "policy.json": json.dumps(
            [
                {"epoch": "x", "freeze": [], "groups": {"groups": [{"names": 5, "lr": "a"}]}},
                7,
                {"freeze": {"groups": {"a": 1}, "fixed_norms": 5, "total": 0, "trainable": 1}},
            ]
        ),
        "graft.json": json.dumps(
            {
                "entries": [
                    {"target": ["a"], "action": ["x"], "confidence": "1", "target_shape": "abc"},
                    3,
                    {"target": "a.b.c.d", "action": "missing", "detail": {"x": 1}, "source": 5},
                ],
                "counts": [1],
                "notes": "xyz",
                "unexpected": 5,
                "verification": {"ok": "maybe"},
                "evidence": {"name": "x"},
            }
        ),
        "model.json": json.dumps({"classes": "abc", "epoch": "2", "preprocessing": [1]}),
        "test_metrics.json": "[]",
        "config.yaml": "model: [1, 2]\ndata: 5\noutput: {plots: true}\n",
    }
    for name, text in documents.items():
        (work / name).write_text(text, encoding="utf-8")
    write_report(work, trust_run=True)
    text = (work / "report.html").read_text(encoding="utf-8")
    page = Page(text)
    assert page.sections == SECTIONS
    assert "&lt;b&gt;" in text
    assert "verification" in section(text, "graft")
    assert "FAILED" in section(text, "graft")  # "ok": "maybe" is not a pass
    assert "config.yaml does not say where the data is" in section(text, "misclassified")
