"""A run's refusals name the run's own config keys: a timm pretrained tag with no weights asked
for says ``weights.source``, the key that exists in a run config (``--weights DEFAULT``, the
graft command's flag, does not exist for ``train``)."""

from __future__ import annotations

import pytest
import yaml

import torchgraft as tg
from support import tiny_config
from torchgraft.cli.main import main
from torchgraft.engine.console import RunConsole
from torchgraft.errors import SpecError


def test_a_timm_tag_without_weights_names_the_run_config_key(digit_folder, tmp_path, capsys):
    config = tiny_config(digit_folder, tmp_path / "runs", model={"name": "timm:resnet18.a1_in1k"})
    with pytest.raises(SpecError, match=r'pass weights\.source="DEFAULT" to load them'):
        tg.fit(config, console=RunConsole(quiet=True))
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(config))
    capsys.readouterr()
    assert main(["train", "--config", str(path)]) == 2
    assert "pass --weights.source DEFAULT to load them" in capsys.readouterr().err
