"""Hand-written models torchgraft has never seen, shared by the anatomy and head tests."""

from __future__ import annotations

import hashlib
import json
import os
import time

import torch
import torch.nn.functional as F
from torch import nn


class LeNet(nn.Module):
    """Classic LeNet-5: the hard-coded 16*5*5 only fits a 32x32 input."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 6, 5)
        self.bn1 = nn.BatchNorm2d(6)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(x, 1)
        return self.fc3(F.relu(self.fc2(F.relu(self.fc1(x)))))


class DictOutput(nn.Module):
    """Returns features first and logits second, Hugging Face style."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 12, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1))
        self.classifier = nn.Linear(12, 6)

    def forward(self, x):
        f = self.features(x).flatten(1)
        return {"features": f, "logits": self.classifier(f)}


class TwoHeadsConcat(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(8, 16)
        self.a = nn.Linear(16, 5)
        self.b = nn.Linear(16, 5)

    def forward(self, x):
        h = F.relu(self.body(x))
        return torch.cat([self.a(h), self.b(h)], 1)


class TinyCNN(nn.Module):
    """A small convolutional classifier for engine tests: any input size (adaptive pooling),
    BatchNorm in the body (freeze policies), dropout before the head (the feature cache's head
    entry), two layer groups worth of blocks."""

    def __init__(
        self,
        num_classes: int = 3,
        in_chans: int = 3,
        width: int = 8,
        dropout: float = 0.1,
        norm: bool = True,
        record: str | None = None,
        delay: float = 0.0,
    ):
        super().__init__()
        self.delay = delay  # seconds per training step: time for a test to kill a process

        def norm_layer(channels):
            return nn.BatchNorm2d(channels) if norm else nn.Identity()

        self.stem = nn.Sequential(
            nn.Conv2d(in_chans, width, 3, padding=1, bias=False), norm_layer(width), nn.ReLU()
        )
        self.block1 = nn.Sequential(
            nn.Conv2d(width, width * 2, 3, stride=2, padding=1, bias=False),
            norm_layer(width * 2),
            nn.ReLU(),
        )
        self.block2 = nn.Sequential(
            nn.Conv2d(width * 2, width * 2, 3, padding=1, bias=False),
            norm_layer(width * 2),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(width * 2, num_classes))
        self.record = record

    def forward(self, x):
        if self.record is not None or self.delay > 0:
            self._observe(x)
        x = self.pool(self.block2(self.block1(self.stem(x)))).flatten(1)
        return self.classifier(x)

    @torch.jit.unused  # TorchScript keeps the model scriptable and savable without it
    def _observe(self, images):
        if self.record is not None:
            _record_call(self, images)
        if self.delay > 0 and self.training:
            time.sleep(self.delay)


def _record_call(model: nn.Module, images: torch.Tensor) -> None:
    """Append one line per forward call to ``{record}-{RANK}.jsonl``: the mode, an id of
    each input image (its pixel sum) and a digest of the weights — what a process saw and
    held, as the model itself observes it (the multi-process tests read these)."""
    weights = hashlib.sha1()
    for tensor in model.state_dict().values():
        weights.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    line = {
        "training": model.training,
        "images": [round(float(image.detach().double().sum()), 3) for image in images],
        "weights": weights.hexdigest(),
    }
    with open(f"{model.record}-{os.environ.get('RANK', '0')}.jsonl", "a") as handle:
        handle.write(json.dumps(line) + "\n")


class NaNAt(TinyCNN):
    """TinyCNN whose ``nan_at``-th training forward pass returns NaN (an injected fault)."""

    def __init__(self, num_classes: int = 3, nan_at: int = 6):
        super().__init__(num_classes)
        self.nan_at, self.calls = nan_at, 0

    def forward(self, x):
        out = super().forward(x)
        if self.training:
            self.calls += 1
            if self.calls == self.nan_at:
                return out * float("nan")
        return out
