"""The main job, whole: `torchgraft train` with no arguments, as the README's first command
runs it (the speed and memory bars are measured by bench/main_job.py, not asserted here)."""

from __future__ import annotations

import json
import subprocess

import pytest


@pytest.mark.slow
def test_the_embedded_default_reaches_97_percent(console_script, tmp_path):
    result = subprocess.run(
        [*console_script, "train"], capture_output=True, text=True, cwd=tmp_path, timeout=1200
    )
    assert result.returncode == 0, result.stderr
    run_dir = next((tmp_path / "runs").iterdir())
    document = json.loads((run_dir / "model.json").read_text())
    assert document["metrics"]["acc1"] >= 0.97
    assert document["classes"] == [str(d) for d in range(10)]
    assert document["build"]["model"] == "timm:tf_efficientnet_lite0"
    graft = json.loads((run_dir / "graft.json").read_text())
    assert graft["verification"]["ok"] is True
    assert "run directory" in result.stdout
