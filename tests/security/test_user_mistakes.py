"""A user's mistake is never "internal error … please report it".

It is one line on stderr naming the thing at fault and what to do, exit status 2; from
Python, a typed error whose message names Python arguments (never a ``--flag``). The
cases: named weights without a network, output paths that cannot be written, a user's
builder that raises, values out of range, options that would be silently ignored, and a
closed stdout (which is not a mistake at all: the command ends quietly, status 141).

Only the network is mocked, at its lowest level: name resolution (``socket.getaddrinfo``)
fails, as it does on a machine without a network. Everything else is real: subprocesses of
``python -m torchgraft``, files in ``tmp_path``, torchvision and timm models without weights.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import timm
import torch
import torchvision
from safetensors.torch import save_file

import torchgraft as tg
from torchgraft.errors import ConfigError, GraftError, HeadError, SpecError
from torchgraft.policies.freezing import freeze
from torchgraft.zoo import download
from torchgraft.zoo.download import WeightsUnavailableError

INTERNAL = "internal error"


def _run(args: list[str], cwd: Path, env: dict, **options) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "torchgraft", *args],
        cwd=cwd,
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=300,
        **options,
    )


def _one_error_line(result: subprocess.CompletedProcess, command: str) -> str:
    """The user-mistake contract: status 2, one line, no traceback, not an internal error."""
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    assert "Traceback" not in result.stderr
    assert INTERNAL not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"torchgraft {command}: error: "), lines[0]
    return lines[0]


def _pythonic(message: str) -> None:
    """A message raised to a Python caller names arguments, not command-line flags."""
    assert " --" not in message, message
    assert "(--" not in message, message


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A real checkpoint: squeezenet1_1's state_dict (no weights downloaded)."""
    folder = tmp_path_factory.mktemp("mistakes")
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), folder / "src.pt")
    return folder / "src.pt"


@pytest.fixture
def workdir(tmp_path, checkpoint) -> Path:
    (tmp_path / "src.pt").symlink_to(checkpoint)
    return tmp_path


# --- 3. named weights without a network --------------------------------------------------------


class _NoNetwork:
    """``socket.getaddrinfo`` failing as on a machine without a network; counts the calls."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, host, *args, **kwargs):
        self.calls.append(str(host))
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no network)")


@pytest.fixture
def no_network(monkeypatch, torch_home, tmp_path) -> _NoNetwork:
    """No network, empty torch hub and Hugging Face caches, no proxy, HF offline mode off."""
    from huggingface_hub import constants

    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf_cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    blocked = _NoNetwork()
    monkeypatch.setattr(socket, "getaddrinfo", blocked)
    return blocked


def test_torchvision_weights_without_network_say_where_the_file_goes(no_network, torch_home):
    """Before: urllib's URLError ("internal error" on the command line)."""
    with pytest.raises(WeightsUnavailableError) as raised:
        tg.create_model("torchvision:squeezenet1_1", weights="DEFAULT")
    error = raised.value
    assert isinstance(error, SpecError)  # exit status 2
    assert isinstance(error, OSError)  # what the library's own failure was
    assert error.exit_code == 2
    message = str(error)
    expected = download.torch_hub_file(
        torchvision.models.SqueezeNet1_1_Weights.DEFAULT.url
    )  # $TORCH_HOME/hub/checkpoints/squeezenet1_1-….pth
    assert str(expected) in message
    assert expected.parent == torch_home / "hub" / "checkpoints"
    assert "not in the cache and cannot be downloaded" in message
    assert "checkpoint file instead" in message
    _pythonic(message)


def test_timm_weights_without_network_fail_at_once(no_network, tmp_path):
    """Before: huggingface_hub retried for ~50 s (23 lines of retry noise), then raised
    LocalEntryNotFoundError; here: one failed name lookup, then the error."""
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as raised:
        tg.create_model("timm:resnet18.a1_in1k", weights=True)
    assert time.monotonic() - start < 20  # the build itself; no backoff sleeps
    assert no_network.calls == ["huggingface.co"]  # one probe, no retry loop
    message = str(raised.value)
    assert str(tmp_path / "hf_cache" / "models--timm--resnet18.a1_in1k") in message
    assert "huggingface.co cannot be reached" in message
    assert "timm:resnet18.a1_in1k" in message
    _pythonic(message)


def test_hf_offline_mode_is_respected_and_named(no_network, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailableError, match="HF_HUB_OFFLINE is set"):
        tg.create_model("timm:resnet18.a1_in1k", weights=True)
    assert no_network.calls == []
    assert constants.HF_HUB_OFFLINE is True  # our own offline switch is put back


def test_cached_timm_weights_load_without_network_or_offline_mode(no_network, tmp_path):
    """The cache alone answers: no request at all (HF_HUB_OFFLINE is not set)."""
    from huggingface_hub import constants

    state = {
        k: torch.randn(v.shape) if v.is_floating_point() else v
        for k, v in timm.create_model("resnet18").state_dict().items()
    }
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(constants.HF_HUB_CACHE) / "models--timm--resnet18.a1_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    save_file(state, str(repo / "snapshots" / commit / "model.safetensors"))

    model = tg.create_model("timm:resnet18.a1_in1k", weights=True, num_classes=5)
    assert torch.equal(model.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert no_network.calls == []
    assert constants.HF_HUB_OFFLINE is False


OFFLINE_CLI = textwrap.dedent(
    """
    import socket, sys

    def no_network(host, *args, **kwargs):
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (no network)")

    socket.getaddrinfo = no_network  # the lowest level every download goes through
    from torchgraft.cli.main import main
    sys.exit(main(sys.argv[1:]))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("source", "into", "cached_at"),
    [
        ("timm:resnet18.a1_in1k", "timm:resnet18", "models--timm--resnet18.a1_in1k"),
        ("torchvision:squeezenet1_1", "torchvision:squeezenet1_1", "squeezenet1_1-"),
    ],
)
def test_cli_named_weights_without_network(source, into, cached_at, tmp_path, subprocess_env):
    env = {
        k: v
        for k, v in subprocess_env.items()
        if "proxy" not in k.lower() and k != "HF_HUB_OFFLINE"
    }
    env.update(TORCH_HOME=str(tmp_path / "torch"), HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-c", OFFLINE_CLI, "graft", source, "--into", into],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Retrying" not in result.stderr
    assert INTERNAL not in result.stderr
    assert "Traceback" not in result.stderr
    # torch.hub announces its download attempt on a line of its own; then our one line.
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) <= 2, result.stderr
    assert lines[-1].startswith("torchgraft graft: error: the weights ")
    assert "not in the cache and cannot be downloaded" in lines[-1]
    assert cached_at in lines[-1]
    assert str(tmp_path) in lines[-1]  # the cache folder of this environment


# --- 4. output paths; a user's builder that raises ---------------------------------------------


def test_output_under_a_file_or_onto_a_folder_is_refused_before_any_work(workdir, subprocess_env):
    """Before: FileExistsError / IsADirectoryError as internal errors, after the graft ran."""
    (workdir / "afile").write_text("not a folder")
    (workdir / "afolder").mkdir()
    base = ["graft", "src.pt", "--into", "torchvision:squeezenet1_1"]
    under_file = _run([*base, "-o", "afile/out.safetensors"], workdir, subprocess_env)
    line = _one_error_line(under_file, "graft")
    assert "-o/--output afile/out.safetensors" in line
    assert "is a file, not a folder" in line

    onto_folder = _run([*base, "-o", "afolder"], workdir, subprocess_env)
    line = _one_error_line(onto_folder, "graft")
    assert "afolder is a folder" in line
    assert "afolder/model.safetensors" in line

    plan_out = _run([*base, "--dry-run", "--plan-out", "afile/p.yaml"], workdir, subprocess_env)
    assert "--plan-out" in _one_error_line(plan_out, "graft")

    confusion = ["eval", "runs/x", "--data", "images", "--output", "afile/confusion.png"]
    line = _one_error_line(_run(confusion, workdir, subprocess_env), "eval")
    assert "--output afile/confusion.png" in line
    assert sorted(p.name for p in workdir.iterdir()) == ["afile", "afolder", "src.pt"]


USER_CODE = textwrap.dedent(
    """
    from torch import nn


    def raises(num_classes=10):
        raise RuntimeError("the config file my_model.yaml is missing")


    def key_error(num_classes=10):
        return {}["depth"]


    def fine(num_classes=10):
        return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))
    """
)


@pytest.fixture
def user_code(tmp_path, monkeypatch, subprocess_env) -> dict:
    """Modules of the user's own: ``mymodels`` (builders) and ``brokenmod`` (raises on import);
    importable here and in subprocesses (the returned environment)."""
    (tmp_path / "mymodels.py").write_text(USER_CODE)
    (tmp_path / "brokenmod.py").write_text("SCALE = 1 / 0\n")
    (tmp_path / "syntaxmod.py").write_text("def build(:\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    env = dict(subprocess_env)
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    return env


def test_a_builder_that_raises_is_the_users_code_not_ours(user_code):
    """Before: the builder's RuntimeError/KeyError escaped untyped (an internal error)."""
    for spec, raised_as in [
        ("mymodels:raises", "RuntimeError"),
        ("mymodels:key_error", "KeyError"),
    ]:
        with pytest.raises(SpecError) as raised:
            tg.create_model(spec, num_classes=3)
        message = str(raised.value)
        assert f"model spec '{spec}'" in message
        assert raised_as in message
        assert "the error is in that code, not in torchgraft" in message.lower()
        assert raised.value.__cause__ is not None  # the user's traceback stays attached
        _pythonic(message)
    with pytest.raises(SpecError, match="importing 'syntaxmod' raised SyntaxError"):
        tg.create_model("syntaxmod:build")


@pytest.mark.slow
def test_cli_a_builder_that_raises_exits_2_naming_the_spec(workdir, user_code):
    result = _run(["graft", "src.pt", "--into", "mymodels:raises"], workdir, user_code)
    line = _one_error_line(result, "graft")
    assert "model spec 'mymodels:raises'" in line
    assert "RuntimeError: the config file my_model.yaml is missing" in line
    assert "not in torchgraft" in line
    assert "--debug" in line  # how to see the user's traceback

    imported = _run(["inspect", "brokenmod:build"], workdir, user_code)
    line = _one_error_line(imported, "inspect")
    assert "importing 'brokenmod' raised ZeroDivisionError: division by zero" in line


# --- 5. values out of range ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "flag", "words"),
    [
        (["graft", "src.pt", "--into", "torchvision:squeezenet1_1", "--min-coverage", "1.5"],
         "--min-coverage", "fraction from 0 to 1"),
        (["graft", "src.pt", "--into", "torchvision:squeezenet1_1", "--min-coverage", "nan"],
         "--min-coverage", "fraction from 0 to 1"),
        (["graft", "src.pt", "--into", "torchvision:squeezenet1_1", "--num-classes", "-3"],
         "--num-classes", "whole number >= 1"),
        (["graft", "src.pt", "--into", "torchvision:squeezenet1_1", "--in-chans", "0"],
         "--in-chans", "whole number >= 1"),
        (["inspect", "torchvision:squeezenet1_1", "--num-classes", "-3"],
         "--num-classes", "whole number >= 1"),
        (["inspect", "torchvision:squeezenet1_1", "--lr", "-1"], "--lr", "number > 0"),
        (["graft", "src.pt", "--into", "torchvision:squeezenet1_1", "--verify-with",
          "torchvision:squeezenet1_1", "--tolerance", "-1"], "--tolerance", "number >= 0"),
    ],
)  # fmt: skip
def test_cli_values_out_of_range_name_the_flag_and_the_range(
    args, flag, words, workdir, subprocess_env
):
    """Before: --min-coverage 1.5 ran the whole graft, then said "(minimum 150%)";
    --num-classes -3 was torch's "negative dimension" as an internal error."""
    line = _one_error_line(_run(args, workdir, subprocess_env), args[0])
    assert f"argument {flag}" in line
    assert words in line
    assert "head" not in line.split("(see")[0]


def test_python_values_out_of_range_name_the_argument(checkpoint):
    model = torchvision.models.squeezenet1_1(weights=None)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for bad in (1.5, -0.1, float("nan"), "0.5"):
        with pytest.raises(GraftError) as raised:
            tg.graft(model, checkpoint, min_coverage=bad)
        assert "min_coverage" in str(raised.value)
        assert "from 0 to 1" in str(raised.value)
        _pythonic(str(raised.value))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    for kwargs, name, error in [
        ({"num_classes": -3}, "num_classes", HeadError),
        ({"num_classes": 0}, "num_classes", HeadError),
        ({"in_chans": -1}, "in_chans", SpecError),
    ]:
        with pytest.raises(error) as raised:
            tg.create_model("torchvision:squeezenet1_1", **kwargs)
        message = str(raised.value)
        assert message.startswith(f"{name} is the number of")
        assert "negative dimension" not in message
        _pythonic(message)


# --- 6. options that would be silently ignored --------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--rules", "r.yaml", "--strategy", "order"], "--rules is used only by --strategy rules"),
        (["--tolerance", "1e-3"], "--tolerance applies to the output comparison of --verify-with"),
        (["--plan", "p.yaml", "--strategy", "exact"], "--plan gives every pairing itself"),
        (["--plan", "p.yaml", "--rules", "r.yaml"], "--plan gives every pairing itself"),
    ],
)
def test_cli_graft_options_that_would_be_ignored_are_refused(extra, words, workdir, subprocess_env):
    """Before: each ran (exit 0) without the option having any effect."""
    result = _run(
        ["graft", "src.pt", "--into", "torchvision:squeezenet1_1", *extra], workdir, subprocess_env
    )
    assert words in _one_error_line(result, "graft")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["inspect", "src.pt", "--freeze", "head"], "--freeze applies to a model spec"),
        (["inspect", "src.pt", "--print-groups", "--lr", "0.1"], "--print-groups, --lr apply"),
        (["inspect", "src.pt", "--weights", "DEFAULT"], "--weights applies to a model spec"),
        (["inspect", "torchvision:squeezenet1_1", "--ema"], "--ema applies to a checkpoint file"),
        pytest.param(  # telling a spec from a file imports torch: seconds
            ["graft", "timm:resnet18", "--into", "timm:resnet18", "--ema"],
            "--ema applies to a checkpoint file, and SOURCE 'timm:resnet18' is a model spec",
            marks=pytest.mark.slow,
        ),
    ],
)  # fmt: skip
def test_cli_options_that_do_not_apply_to_the_target_are_refused(
    args, words, workdir, subprocess_env
):
    line = _one_error_line(_run(args, workdir, subprocess_env), args[0])
    assert words in line


@pytest.mark.slow
def test_cli_rules_alone_mean_strategy_rules_and_dry_run_says_what_it_would_write(
    tmp_path, subprocess_env
):
    """Before: --rules without --strategy was ignored (auto ran); --dry-run -o said nothing
    of the output."""
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    torch.save({f"net.{k}": v for k, v in state.items()}, tmp_path / "prefixed.pt")
    (tmp_path / "rules.yaml").write_text("- pattern: '^net\\.'\n  replace: ''\n")
    result = _run(
        ["graft", "prefixed.pt", "--into", "torchvision:squeezenet1_1", "--rules", "rules.yaml",
         "--dry-run", "-o", "new/dir/out.safetensors"],
        tmp_path, subprocess_env,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("graft rules: prefixed.pt")
    assert "evidence: rules 52" in lines
    assert lines[-1] == (
        "dry run: nothing was loaded or written; without --dry-run this would also write "
        "new/dir/out.safetensors and new/dir/out.safetensors.json"
    )
    assert not (tmp_path / "new").exists()


@pytest.mark.slow
def test_cli_in_chans_mode_that_nothing_uses_is_refused(workdir, subprocess_env):
    """Before: --in-chans-mode pick was accepted and ignored (the channels already agreed)."""
    out = workdir / "out.safetensors"
    result = _run(
        ["graft", "src.pt", "--into", "torchvision:squeezenet1_1", "--in-chans-mode", "pick",
         "-o", str(out)],
        workdir, subprocess_env,
    )  # fmt: skip
    line = _one_error_line(result, "graft")
    assert "--in-chans-mode pick was not used" in line
    assert not out.exists()


@pytest.mark.slow
def test_cli_inspect_audit_options_imply_print_groups_and_num_classes_is_honoured(
    tmp_path, subprocess_env
):
    """Before: --freeze without --print-groups, and --num-classes without it, did nothing."""
    result = _run(
        ["inspect", "torchvision:squeezenet1_1", "--freeze", "head", "--num-classes", "5"],
        tmp_path,
        subprocess_env,
    )
    assert result.returncode == 0, result.stderr
    assert "freeze 'head', bn 'frozen'" in result.stdout
    assert "(512 → 5)" in result.stdout


def test_python_rules_without_strategy_mean_rules_and_with_another_are_refused(tmp_path):
    state = torchvision.models.squeezenet1_1(weights=None).state_dict()
    source = {f"net.{k}": v for k, v in state.items()}
    rules = [{"pattern": r"^net\.", "replace": ""}]
    model = torchvision.models.squeezenet1_1(weights=None)
    assert tg.plan_graft(model, source, rules=rules).strategy == "rules"
    with pytest.raises(GraftError) as raised:
        tg.graft(model, source, rules=rules, strategy="order")
    message = str(raised.value)
    assert 'strategy="order" would ignore them' in message
    _pythonic(message)


def test_freeze_last_n_beyond_the_model_is_refused_and_changes_nothing():
    """Before: "last:99" trained everything, silently."""
    model = torchvision.models.squeezenet1_1(weights=None)
    groups = [g.name for g in tg.spec_of(model).layer_groups if g.name != "head"]
    freeze(model, "head")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    with pytest.raises(ConfigError) as raised:
        freeze(model, "last:99")
    message = str(raised.value)
    assert f"the model has {len(groups)} ({', '.join(groups)})" in message
    assert f"last:{len(groups)}" in message
    assert [n for n, p in model.named_parameters() if p.requires_grad] == trainable
    # The whole range stays valid: last:0 is the head alone, last:len trains every group.
    assert freeze(model, "last:0").trainable == freeze(model, "head").trainable
    assert freeze(model, f"last:{len(groups)}").frozen == 0


# --- 7. a closed stdout -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def many_keys(tmp_path_factory) -> Path:
    """A checkpoint whose listing (~200 KB) is far more than a pipe holds (64 KB)."""
    folder = tmp_path_factory.mktemp("many_keys")
    state = {
        f"blocks.{i}.layer_with_a_rather_long_name.weight": torch.zeros(1) for i in range(3000)
    }
    torch.save(state, folder / "many.pt")
    return folder / "many.pt"


def _with_stdout_closed(args: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    """Run with stdout a pipe whose reader is gone (``| head -1`` once head has exited)."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        return subprocess.run(
            [sys.executable, "-m", "torchgraft", *args],
            cwd=cwd, env=env, stdout=writer, stderr=subprocess.PIPE, text=True, timeout=300,
        )  # fmt: skip
    finally:
        os.close(writer)


@pytest.mark.slow
@pytest.mark.parametrize(
    "args",
    [["inspect", "many.pt", "--no-identify"], ["inspect", "many.pt", "--no-identify", "--json"]],
)
def test_a_closed_stdout_ends_quietly_with_status_141(args, many_keys, subprocess_env):
    """Before: status 1 (rich's exit) or "internal error: BrokenPipeError"."""
    result = _with_stdout_closed(args, many_keys.parent, subprocess_env)
    assert result.stderr == ""
    assert result.returncode == 141  # 128 + SIGPIPE: what a shell shows for `git log | head`


@pytest.mark.slow
def test_models_piped_into_head_ends_quietly(tmp_path, subprocess_env):
    """The reported case, as a shell runs it: `torchgraft models | head -1`."""
    child = subprocess.Popen(
        [sys.executable, "-m", "torchgraft", "models"],
        cwd=tmp_path, env=subprocess_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    first = child.stdout.readline()
    child.stdout.close()  # head -1 exits
    stderr = child.stderr.read().decode()
    status = child.wait(timeout=300)
    assert first.split()[0] == b"spec"
    assert stderr == ""
    assert status == 141


# --- 8. each caller is told in its own words ----------------------------------------------------


def test_hints_name_python_arguments_from_python_and_flags_from_the_command_line():
    """Before: a tag without weights said "pass weights='DEFAULT'" to `torchgraft inspect`
    too, where the flag is --weights."""
    from torchgraft.wording import speaking_cli

    with pytest.raises(SpecError) as python:
        tg.create_model("timm:resnet18.a1_in1k")
    assert 'pass weights="DEFAULT" to load them' in str(python.value)
    _pythonic(str(python.value))
    with speaking_cli(), pytest.raises(SpecError) as cli:
        tg.create_model("timm:resnet18.a1_in1k")
    assert "pass --weights DEFAULT to load them" in str(cli.value)

    with speaking_cli(), pytest.raises(HeadError) as cli:
        tg.create_model("torchvision:squeezenet1_1", num_classes=-3)
    assert str(cli.value).startswith("--num-classes is the number of classes")
