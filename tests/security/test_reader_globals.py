"""Globals a pickle names: an opt-in allows exactly one object, by its own name, never code.

The attack: a pickle names ``argparse._os.system`` (the module ``argparse._os`` is not on
torch's blocked list). The refusal used to suggest allowing that name, and allowing it
resolved ``argparse`` -> ``_os`` -> ``system``, i.e. ``os.system``: the file's command ran.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from reader_forge import (
    EMPTY_DICT,
    PROTO2,
    REDUCE,
    SETITEM,
    STOP,
    TUPLE1,
    a_tensor,
    glob,
    legacy,
    storage,
    text,
    torch_zip,
)  # fmt: skip

from torchgraft.checkpoint.read import read_checkpoint
from torchgraft.errors import CheckpointError, UnsafeCheckpointError


def _calling(module: str, name: str, argument: str, legacy_format: bool, folder: Path) -> Path:
    """A state_dict whose ``x`` entry is ``module.name(argument)``."""
    main = (
        PROTO2 + EMPTY_DICT + text("w")
        + (a_tensor() if not legacy_format else _legacy_tensor())
        + SETITEM + text("x") + glob(module, name) + text(argument) + TUPLE1 + REDUCE + SETITEM
        + STOP
    )  # fmt: skip
    if legacy_format:
        return legacy(folder / "steer_legacy.pt", main)
    return torch_zip(folder / "steer.pt", main)


def _legacy_tensor() -> bytes:
    from reader_forge import tensor

    return tensor(storage("0", 4, extra=b"N"), (4,), (1,))


@pytest.mark.parametrize("legacy_format", [False, True], ids=["zip", "legacy"])
def test_a_name_reaching_os_system_through_another_module_is_refused_and_not_suggested(
    tmp_path, legacy_format
):
    marker = tmp_path / "MARKER"
    path = _calling("argparse._os", "system", f"touch {marker}", legacy_format, tmp_path)
    with pytest.raises(UnsafeCheckpointError) as refused:
        read_checkpoint(path)
    message = str(refused.value)
    assert refused.value.globals_wanted == ["argparse._os.system"]
    assert "allow_globals=" not in message  # no advice to allow it
    assert "can never be allowed" in message
    # Allowing it by name, as the old message advised, must not run the command either.
    with pytest.raises(CheckpointError, match=r"cannot allow global 'argparse\._os\.system'"):
        read_checkpoint(path, allow_globals=["argparse._os.system"])
    assert not marker.exists()


@pytest.mark.parametrize(
    ("name", "reached"),
    [("argparse._os.getcwd", "posix.getcwd"), ("argparse._sys.exit", "sys.exit")],
)
def test_an_allowed_name_must_be_the_objects_own_name(tmp_path, name, reached):
    # Neither name is denied as spelled: the check that refuses them is that the object
    # reached has another name of its own (it was reached through another module).
    module, attribute = name.rsplit(".", 1)
    path = _calling(module, attribute, "x", False, tmp_path)
    with pytest.raises(UnsafeCheckpointError) as refused:
        read_checkpoint(path)
    assert "can never be allowed" in str(refused.value)
    assert reached in str(refused.value)
    with pytest.raises(CheckpointError, match=re.escape(f"it is '{reached}', reached by another")):
        read_checkpoint(path, allow_globals=[name])


DANGEROUS = [
    "os.system", "posix.system", "subprocess.Popen", "subprocess.run", "builtins.eval",
    "builtins.exec", "builtins.compile", "builtins.open", "builtins.__import__",
    "builtins.getattr", "importlib.import_module", "runpy.run_path", "pty.spawn",
    "shutil.rmtree", "pickle.loads", "marshal.loads", "ctypes.CDLL", "operator.attrgetter",
    "operator.methodcaller", "functools.partial", "functools.reduce", "_codecs.decode",
    "codecs.decode", "code.InteractiveInterpreter", "torch.hub.load", "torch.load",
    "torch.jit.load", "numpy.load", "numpy.testing._private.utils.runstring",
]  # fmt: skip


@pytest.mark.parametrize("name", DANGEROUS)
def test_dangerous_callables_are_never_allowed_whatever_the_file(tmp_path, name):
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="cannot allow global"):
        read_checkpoint(tmp_path / "w.pt", allow_globals=[name])


def test_a_crafted_name_cannot_smuggle_another_and_is_shown_escaped(tmp_path, monkeypatch):
    (tmp_path / "tg_plain.py").write_text("class Scale:\n    pass\n\nAlias = Scale\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    odd = "Scale, builtins.exec\x1b[2J\u202e"  # a list separator, a terminal escape, RLO
    path = _calling("tg_plain", odd, "x", False, tmp_path)
    with pytest.raises(UnsafeCheckpointError) as refused:
        read_checkpoint(path, allow_globals=["tg_plain.Scale"])  # allowing Scale is not it
    message = str(refused.value)
    assert "\x1b" not in message
    assert "\u202e" not in message
    assert "\\x1b" in message
    assert "allow_globals=" not in message
    with pytest.raises(CheckpointError, match=r"not a module\.Name"):
        read_checkpoint(path, allow_globals=[f"tg_plain.{odd}"])
    # An alias is the object's other name: allowing it would hand out whatever it holds.
    alias = _calling("tg_plain", "Alias", "x", False, tmp_path)
    with pytest.raises(CheckpointError, match=r"it is 'tg_plain\.Scale', reached by another"):
        read_checkpoint(alias, allow_globals=["tg_plain.Alias"])
    sys.modules.pop("tg_plain", None)


def test_allowing_a_name_allows_that_object_and_nothing_more(tmp_path, monkeypatch):
    (tmp_path / "tg_config.py").write_text(
        "class Config:\n    def __init__(self, name):\n        self.name = name\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    path = _calling("tg_config", "Config", "resnet", False, tmp_path)
    with pytest.raises(UnsafeCheckpointError) as refused:
        read_checkpoint(path)
    assert 'allow_globals=["tg_config.Config"]' in str(refused.value)
    checkpoint = read_checkpoint(path, allow_globals=["tg_config.Config"])
    assert checkpoint.set_aside == {"x": "Config"}
    sys.modules.pop("tg_config", None)


@pytest.mark.slow
def test_the_command_line_allow_global_cannot_be_steered(tmp_path, console_script):
    marker = tmp_path / "MARKER"
    path = _calling("argparse._os", "system", f"touch {marker}", False, tmp_path)
    for extra in ([], ["--allow-global", "argparse._os.system"]):
        result = subprocess.run(
            [*console_script, "inspect", str(path), "--no-identify", *extra],
            capture_output=True, text=True, timeout=300,
        )  # fmt: skip
        assert result.returncode == 2, result.stderr
        assert "internal error" not in result.stderr
        assert "--allow-global argparse._os.system" not in result.stderr
    assert not marker.exists()
