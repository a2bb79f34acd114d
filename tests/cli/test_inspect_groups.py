"""`torchgraft inspect MODEL --print-groups`: the freeze summary and optimizer-group audit."""

from __future__ import annotations

import json
import subprocess

import torchvision


def test_print_groups_reports_what_trains_and_the_groups(console_script):
    out = subprocess.run(
        [
            *console_script,
            "inspect",
            "torchvision:resnet18",
            "--print-groups",
            "--freeze",
            "last:1",
            "--lr",
            "0.01",
            "--backbone-lr",
            "0.001",
            "--weight-decay",
            "1e-4",
            "--num-classes",
            "10",
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    doc = json.loads(out.stdout)
    reference = torchvision.models.resnet18(num_classes=10)
    expected = sum(p.numel() for p in reference.layer4.parameters()) + sum(
        p.numel() for p in reference.fc.parameters()
    )
    assert doc["freeze"]["trainable"] == expected
    rows = {row["name"]: row for row in doc["param_groups"]["groups"]}
    assert set(rows) == {"layer4", "layer4.no_decay", "head", "head.no_decay"}
    assert rows["head"]["lr"] == 0.01
    assert rows["layer4"]["lr"] == 0.001
    assert rows["head.no_decay"]["weight_decay"] == 0
    assert rows["layer4"]["weight_decay"] == 1e-4
    # every trainable element is in exactly one group
    assert sum(r["elements"] for r in rows.values()) == expected


def test_print_groups_rejects_an_unknown_policy(console_script):
    out = subprocess.run(
        [
            *console_script,
            "inspect",
            "torchvision:resnet18",
            "--print-groups",
            "--freeze",
            "lats:2",
        ],
        capture_output=True,
        text=True,
    )
    assert out.returncode == 2
    assert "lats:2" in out.stderr
    assert "Traceback" not in out.stderr
