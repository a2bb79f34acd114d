"""The command line starts without importing torch, and its literal choices stay in step
with the library's."""

from __future__ import annotations

import subprocess
import sys

import torchgraft as tg
from torchgraft.cli import graft_cmd
from torchgraft.grafting.api import MIN_COVERAGE
from torchgraft.grafting.match import STRATEGIES
from torchgraft.grafting.values.adapt import IN_CHANS_MODES
from torchgraft.grafting.verify import DEFAULT_TOLERANCE


def test_help_imports_no_torch():
    code = (
        "import sys, torchgraft, torchgraft.cli.main as m; m.build_parser();"
        "print(sorted(k for k in ('torch', 'timm', 'torchvision') if k in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_literals_match_the_library():
    assert set(graft_cmd.STRATEGIES) == set(STRATEGIES)
    assert graft_cmd.STRATEGIES[0] == "auto"  # the default comes first in --help
    assert graft_cmd.IN_CHANS_MODES == IN_CHANS_MODES
    assert graft_cmd.MIN_COVERAGE == MIN_COVERAGE
    assert graft_cmd.DEFAULT_TOLERANCE == DEFAULT_TOLERANCE


def test_public_api_names_resolve():
    for name in tg.__all__:
        assert getattr(tg, name) is not None, name
    assert "create_model" in dir(tg)
