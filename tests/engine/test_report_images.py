"""The report's two image sections at the library level: which image goes where, in which
order, and what a section says when it has nothing to show. Probabilities are built by
hand, so every case (all right, all wrong, ties, a confident mistake) is exact."""

from __future__ import annotations

import re

from torchgraft.engine.report.examples import Example, Examples, Selection
from torchgraft.engine.report.files import RunFiles
from torchgraft.engine.report.gallery import image_sections

#: (true label, probabilities over 3 classes) of six images, by index.
IMAGES = [
    (0, [0.90, 0.05, 0.05]),  # 0: right, sure
    (0, [0.40, 0.35, 0.25]),  # 1: right, unsure
    (1, [0.10, 0.50, 0.40]),  # 2: right, unsure
    (2, [0.97, 0.02, 0.01]),  # 3: wrong, the model's most confident mistake, p(true) 0.01
    (1, [0.50, 0.30, 0.20]),  # 4: wrong, p(true) 0.30
    (2, [0.05, 0.94, 0.01]),  # 5: wrong, p(true) 0.01 too: a tie with image 3
]


def selection(count: int) -> Selection:
    chosen = Selection(count)
    for index, (label, probabilities) in enumerate(IMAGES):
        chosen.add(index, label, probabilities, payload=f"image {index}")
    return chosen


def test_the_misclassified_are_only_wrong_ones_lowest_true_probability_first():
    chosen = selection(count=3)
    assert (chosen.wrong, chosen.right) == (3, 3)
    # worst first = the lowest probability of the true class; a tie goes to the lower index
    assert [index for index, _, _ in chosen.misclassified()] == [3, 5, 4]
    assert [payload for _, _, payload in chosen.misclassified()] == [
        "image 3",
        "image 5",
        "image 4",
    ]


def test_the_least_confident_are_only_right_ones_least_sure_first():
    chosen = selection(count=2)
    assert [index for index, _, _ in chosen.least_confident()] == [1, 2]  # 0.40, then 0.50
    assert [index for index, _, _ in chosen.misclassified()] == [3, 5]  # capped at count


def test_a_model_right_on_every_image_has_no_misclassified_ones():
    chosen = Selection(4)
    for index in range(5):
        chosen.add(index, index % 2, [0.8, 0.2] if index % 2 == 0 else [0.3, 0.7])
    assert chosen.misclassified() == []
    assert [i for i, _, _ in chosen.least_confident()] == [1, 3, 0, 2]
    assert (chosen.wrong, chosen.right) == (0, 5)


def example(name: str, true: str, predicted: str, p_true: float) -> Example:
    return Example(name, true, predicted, 0.9, p_true, 0.0, b"png", "c", 0.05)


def section(sections, key: str) -> str:
    found = [s for s in sections if s.key == key]
    assert len(found) == 1
    return found[0].title + " " + found[0].body


def test_no_misclassified_images_is_said_plainly(tmp_path):
    found = Examples(
        least_confident=[example("a/1.png", "a", "a", 0.55)], wrong=0, right=7, split_size=7,
        looked_at=7,
    )  # fmt: skip
    sections = image_sections(RunFiles(tmp_path), found)
    assert [s.key for s in sections] == ["misclassified", "least-confident"]
    wrong = section(sections, "misclassified")
    assert "Misclassified validation images" in wrong
    assert (
        "None: the saved best model classified every one of the 7 validation images correctly"
        in wrong
    )
    assert "<figure>" not in wrong
    right = section(sections, "least-confident")
    assert "Least confident correct validation images" in right
    assert "7 of the 7 validation images were classified correctly" in right
    assert right.count("<figure>") == 1


def test_each_section_shows_its_own_images_with_truthful_captions(tmp_path):
    found = Examples(
        misclassified=[example("b/<2>.png", "b", "a", 0.02)],
        least_confident=[example("a/1.png", "a", "a", 0.51)],
        wrong=1, right=1, split_size=2, looked_at=2,
    )  # fmt: skip
    sections = image_sections(RunFiles(tmp_path), found)
    wrong = section(sections, "misclassified")
    assert "1 of the 2 validation images were classified wrongly" in wrong
    assert re.findall(r"<figcaption>(.*?)</figcaption>", wrong) == [
        '<span class="bad">predicted a</span> 90%<br>true b 2%<br>b/&lt;2&gt;.png'
    ]
    right = section(sections, "least-confident")
    assert re.findall(r"<figcaption>(.*?)</figcaption>", right) == [
        '<span class="good">a</span> 51%<br>next: c 5%<br>a/1.png'
    ]


def test_a_model_wrong_on_every_image_has_no_correct_ones_to_show(tmp_path):
    found = Examples(
        misclassified=[example("b/2.png", "b", "a", 0.02)], wrong=3, right=0, split_size=3,
        looked_at=3,
    )  # fmt: skip
    right = section(image_sections(RunFiles(tmp_path), found), "least-confident")
    assert "None: the saved best model got none of the 3 validation images right" in right
    assert "<figure>" not in right
