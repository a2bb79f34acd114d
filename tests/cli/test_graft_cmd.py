"""``torchgraft graft`` as users run it: the installed console script in a subprocess, real
files in tmp_path, and a tiny model package (``tinynets``) put on PYTHONPATH so the
target can be a ``package.module:callable`` spec that builds in milliseconds.

Each run that gets past argument parsing imports torch, timm and torchvision (5-7 s on two
cores), so those tests are marked slow."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

TINYNETS = textwrap.dedent(
    """
    import torch
    from torch import nn


    class Net(nn.Module):
        def __init__(self, num_classes=3, padding=1):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 4, 3, padding=padding, bias=False)
            self.bn1 = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=padding, bias=False)
            self.bn2 = nn.BatchNorm2d(4)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(4, num_classes)

        def forward(self, x):
            x = torch.relu(self.bn1(self.conv1(x)))
            x = torch.relu(self.bn2(self.conv2(x)))
            return self.fc(self.pool(x).flatten(1))


    def padded(num_classes=3):
        "Net's tensors exactly, but no padding: another function."
        return Net(num_classes, padding=0)
    """
)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "tinynets.py").write_text(TINYNETS)
    return tmp_path


@pytest.fixture
def source_state() -> dict[str, torch.Tensor]:
    """A trained-looking Net state_dict as a DDP run saves it (``module.`` prefix)."""
    import importlib.util

    spec = importlib.util.spec_from_loader("tinynets_src", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(TINYNETS, module.__dict__)
    net = module.Net()
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for key, value in net.state_dict().items():
            if key.endswith("running_var"):
                value.copy_(torch.rand(value.shape, generator=generator) + 0.5)
            elif value.is_floating_point():
                value.copy_(torch.randn(value.shape, generator=generator))
            else:
                value.fill_(17)
    return {"module." + k: v.clone() for k, v in net.state_dict().items()}


@pytest.fixture
def source_file(workdir, source_state) -> Path:
    path = workdir / "colleague.pt"
    torch.save(source_state, path)
    return path


def run(console_script, workdir: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(workdir), env.get("PYTHONPATH")]))
    env["PYTHONWARNINGS"] = "ignore"
    return subprocess.run(
        [*console_script, "graft", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr
    return lines


@pytest.mark.slow
def test_dry_run_prints_the_plan_and_writes_nothing(console_script, workdir, source_file):
    before = sorted(p.name for p in workdir.iterdir())
    result = run(
        console_script, workdir, "colleague.pt", "--into", "tinynets:Net", "--dry-run",
        "-o", "out.safetensors",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "graft auto: colleague.pt [torch]"
    assert lines[1] == "coverage 100.0% of target parameter elements · rename 14"
    assert "  * ← module.*  (14 keys, rest of the name equal)" in lines
    assert sorted(p.name for p in workdir.iterdir()) == before  # no output, no sidecar


@pytest.mark.slow
def test_json_verify_and_output(console_script, workdir, source_file, source_state):
    result = run(
        console_script, workdir, str(source_file), "--into", "tinynets:Net", "--json",
        "--verify-with", "tinynets:Net", "-o", "out.safetensors",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)  # exactly one JSON document, nothing else
    assert isinstance(document, dict)
    assert document["dry_run"] is False
    assert document["output"] == "out.safetensors"
    assert document["coverage"] == 1.0
    assert document["verification"]["ok"] is True
    assert document["verification"]["output_rel_diff"] == 0.0
    assert len(document["entries"]) == 14
    written = load_file(workdir / "out.safetensors")
    assert sorted(written) == sorted(k.removeprefix("module.") for k in source_state)
    for key, value in source_state.items():
        assert torch.equal(written[key.removeprefix("module.")], value), key
    sidecar = json.loads((workdir / "out.safetensors.json").read_text())
    assert sidecar["mapping"]["bn2.running_var"] == "module.bn2.running_var"


@pytest.mark.slow
def test_an_edited_plan_is_applied(console_script, workdir, source_file, source_state):
    planned = run(
        console_script, workdir, str(source_file), "--into", "tinynets:Net", "--dry-run",
        "--plan-out", "plan.yaml", "--json",
    )  # fmt: skip
    assert planned.returncode == 0, planned.stderr
    shown = json.loads(planned.stdout)  # one JSON document, even with --plan-out
    assert shown["dry_run"] is True
    assert shown["output"] is None
    assert {e["action"] for e in shown["entries"]} == {"rename"}
    text = (workdir / "plan.yaml").read_text()
    assert text.startswith("# torchgraft graft plan")
    plan = yaml.safe_load(text)
    assert [e["target"] for e in plan["entries"]][:2] == ["conv1.weight", "bn1.weight"]
    for entry in plan["entries"]:
        if entry["target"] == "fc.weight":
            entry["source"] = None  # edit 1: no source
        if entry["target"] == "fc.bias":
            entry["action"] = "missing"  # edit 2: the other documented way
        if entry["target"] == "conv2.weight":
            entry["source"] = "module.conv2.weight"  # unchanged, stays loaded
    (workdir / "plan.yaml").write_text(yaml.safe_dump(plan, sort_keys=False))
    applied = run(
        console_script, workdir, str(source_file), "--into", "tinynets:Net", "--plan",
        "plan.yaml", "-o", "out.safetensors", "--json",
    )  # fmt: skip
    assert applied.returncode == 0, applied.stderr
    report = json.loads(applied.stdout)
    missing = [e["target"] for e in report["entries"] if e["action"] == "missing"]
    assert missing == ["fc.weight", "fc.bias"]
    written = load_file(workdir / "out.safetensors")
    for key in ("fc.weight", "fc.bias"):
        assert not torch.equal(written[key], source_state["module." + key])  # fresh values
    for key, value in source_state.items():
        if not key.startswith("module.fc."):
            assert torch.equal(written[key.removeprefix("module.")], value), key


@pytest.mark.slow
def test_failed_verification_exits_1_with_one_line_and_writes_nothing(
    console_script, workdir, source_file
):
    result = run(
        console_script, workdir, str(source_file), "--into", "tinynets:padded",
        "--verify-with", "tinynets:Net", "-o", "out.safetensors",
    )  # fmt: skip
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("torchgraft graft: error: VERIFICATION FAILED: ")
    assert "tolerance 1e-04" in lines[0]
    # no padding: conv1's output is smaller, so the models part right after it
    assert "after target module 'conv1' (source 'conv1')" in lines[0]
    assert lines[0].endswith("nothing was written to out.safetensors")
    assert "FAILED: the graft changed the function" in result.stdout  # the report, above
    assert not (workdir / "out.safetensors").exists()
    assert not (workdir / "out.safetensors.json").exists()


@pytest.mark.slow
def test_a_failed_verification_accepted_on_purpose_writes_the_output(
    console_script, workdir, source_file
):
    result = run(
        console_script, workdir, str(source_file), "--into", "tinynets:padded",
        "--verify-with", "tinynets:Net", "-o", "out.safetensors", "--allow-mismatch",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "FAILED: the graft changed the function" in result.stdout  # still reported
    assert (workdir / "out.safetensors").exists()
    assert (workdir / "out.safetensors.json").exists()


@pytest.mark.slow
def test_a_dry_run_says_the_graft_would_fail_its_check_before_loading(
    console_script, workdir, source_file
):
    """With the source architecture known, a dry run runs the check the graft would run on
    a copy, and says the graft would be refused; --allow-mismatch takes that back."""
    args = [str(source_file), "--into", "tinynets:padded", "--verify-with", "tinynets:Net"]
    result = run(console_script, workdir, *args, "--dry-run")
    assert result.returncode == 0, result.stderr
    refused = [x for x in result.stderr.splitlines() if "the graft would be refused" in x]
    assert len(refused) == 1, result.stderr
    assert "does not compute" in refused[0]
    accepted = run(console_script, workdir, *args, "--dry-run", "--allow-mismatch")
    assert accepted.returncode == 0, accepted.stderr
    assert "the graft would be refused" not in accepted.stderr


@pytest.mark.slow
def test_plan_out_says_where_it_wrote(console_script, workdir, source_file):
    result = run(
        console_script, workdir, "colleague.pt", "--into", "tinynets:Net", "--dry-run",
        "--plan-out", "plans/plan.yaml",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    written = (workdir / "plans" / "plan.yaml").resolve()
    assert written.is_file()
    last = result.stdout.splitlines()[-1]
    assert last == f"wrote the plan to {written}; edit it, then apply it with --plan {written}"
    quiet = run(
        console_script, workdir, "colleague.pt", "--into", "tinynets:Net", "--dry-run",
        "--plan-out", "plan.yaml", "--json",
    )  # fmt: skip
    json.loads(quiet.stdout)  # still exactly one JSON document on stdout...
    assert f"wrote the plan to {workdir.resolve() / 'plan.yaml'}" in quiet.stderr  # ...and this


@pytest.mark.slow
def test_a_cut_listing_names_the_flag_that_lists_everything(console_script, workdir, source_state):
    extra = {f"extra{i}.proj.weight": torch.ones(7) for i in range(20)}  # 20 unexpected lines
    torch.save({**source_state, **extra}, workdir / "more.pt")
    short = run(console_script, workdir, "more.pt", "--into", "tinynets:Net")
    assert short.returncode == 0, short.stderr
    assert "  … 8 more (--all lists every key)" in short.stdout.splitlines()
    assert "to_json()" not in short.stdout
    full = run(console_script, workdir, "more.pt", "--into", "tinynets:Net", "--all")
    assert "extra19.proj.weight" in full.stdout
    assert "more (" not in full.stdout


@pytest.mark.slow
def test_an_unsafe_pickle_names_the_flags_here_and_the_arguments_in_python(
    console_script, workdir, source_state
):
    import argparse

    import torchgraft as tg

    # argparse.Namespace: the classic training-script pickle, outside torch's safe list
    torch.save({"state_dict": source_state, "args": argparse.Namespace(lr=0.1)}, workdir / "a.pt")
    with pytest.raises(tg.UnsafeCheckpointError) as refused:
        tg.read_checkpoint(workdir / "a.pt")
    assert 'allow_globals=["argparse.Namespace"]) or use trust=True' in str(refused.value)
    assert "--" not in str(refused.value)
    result = run(console_script, workdir, "a.pt", "--into", "tinynets:Net")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert "(--allow-global argparse.Namespace) or use --trust-checkpoint" in lines[0]
    assert "allow_globals" not in lines[0]


@pytest.mark.slow
@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["absent.pt", "--into", "tinynets:Net"], "absent.pt: no such file"),
        (["colleague.pt", "--into", "torchvision:resnet1800"], "no torchvision model 'resnet1800'"),
        (["colleague.pt", "--into", "tinynets:Nte"], "has no attribute 'Nte'"),
    ],
    ids=["missing-file", "unknown-model", "unknown-callable"],
)
def test_bad_input_exits_2_with_one_clear_line(console_script, workdir, source_file, args, needle):
    result = run(console_script, workdir, *args)
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("torchgraft graft: error:")
    assert needle in lines[0]
    assert result.stdout == ""


def test_unknown_strategy_exits_2_naming_it(console_script, workdir, source_file):
    result = run(
        console_script, workdir, "colleague.pt", "--into", "tinynets:Net", "--strategy", "best"
    )
    assert result.returncode == 2
    lines = error_lines(result)
    assert "invalid choice: 'best'" in lines[-1]


def test_unknown_strategy_is_one_stderr_line(console_script, workdir, source_file):
    result = run(
        console_script, workdir, "colleague.pt", "--into", "tinynets:Net", "--strategy", "best"
    )
    assert len(error_lines(result)) == 1, result.stderr


@pytest.mark.slow
def test_exact_strategy_on_differing_keys_exits_2_listing_them(
    console_script, workdir, source_file
):
    result = run(
        console_script, workdir, "colleague.pt", "--into", "tinynets:Net", "--strategy", "exact"
    )
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1
    assert "strategy 'exact' found differences" in lines[0]
    assert "missing (14): conv1.weight" in lines[0]
    assert "unexpected (14): module.conv1.weight" in lines[0]


@pytest.mark.slow
def test_below_min_coverage_exits_2_and_writes_nothing(console_script, workdir, source_state):
    partial = {k: v for k, v in source_state.items() if k.startswith("module.conv1")}
    torch.save(partial, workdir / "partial.pt")
    result = run(
        console_script, workdir, "partial.pt", "--into", "tinynets:Net", "-o", "out.safetensors"
    )
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1
    assert "refusing to graft" in lines[0]
    # by hand: conv1 holds 108 of the 283 parameter elements (108+8+144+8+15), rounded down
    assert "38.1%" in lines[0]
    assert "minimum 50%" in lines[0]
    assert not (workdir / "out.safetensors").exists()


@pytest.mark.slow
def test_an_inexact_graft_is_refused_in_flags_and_accepted_on_request(console_script, workdir):
    """Only registration order tells the two norms apart: refused (exit 1, nothing written)
    in the CLI's words; a dry run says so; --allow-uncertain loads it."""
    import importlib.util

    spec = importlib.util.spec_from_loader("tinynets_fresh", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(TINYNETS, module.__dict__)
    names = {"conv1": "stem", "bn1": "omega", "conv2": "body", "bn2": "alpha", "fc": "head"}
    state = {
        names[k.partition(".")[0]] + "." + k.partition(".")[2]: v
        for k, v in module.Net().state_dict().items()
    }
    torch.save(state, workdir / "renamed.pt")
    out = workdir / "out.safetensors"
    refused = run(console_script, workdir, "renamed.pt", "--into", "tinynets:Net", "-o", str(out))
    assert refused.returncode == 1
    assert "registration-order" in refused.stderr
    assert "--allow-uncertain" in refused.stderr
    assert "--verify-with SPEC" in refused.stderr
    assert "allow_uncertain=True" not in refused.stderr
    assert not out.exists()
    dry = run(console_script, workdir, "renamed.pt", "--into", "tinynets:Net", "--dry-run")
    assert dry.returncode == 0
    assert "the graft would be refused" in dry.stderr
    accepted = run(
        console_script, workdir, "renamed.pt", "--into", "tinynets:Net", "--allow-uncertain",
        "-o", str(out),
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert out.exists()


@pytest.mark.slow
def test_allow_partial_globs_accept_exactly_the_keys_they_name(
    console_script, workdir, source_state
):
    """A source without bn2: refused naming the module and --allow-partial; a glob that does
    not cover bn2 is still refused; one that does loads everything else."""
    state = {k: v for k, v in source_state.items() if not k.startswith("module.bn2.")}
    torch.save(state, workdir / "no_bn2.pt")
    out = workdir / "out.safetensors"
    base = ("no_bn2.pt", "--into", "tinynets:Net", "-o", str(out))
    refused = run(console_script, workdir, *base)
    assert refused.returncode == 1
    assert "bn2" in refused.stderr
    assert "--allow-partial" in refused.stderr
    assert not out.exists()
    elsewhere = run(console_script, workdir, *base, "--allow-partial", "bn1.*")
    assert elsewhere.returncode == 1
    assert not out.exists()
    accepted = run(console_script, workdir, *base, "--allow-partial", "bn2.*")
    assert accepted.returncode == 0, accepted.stderr
    written = load_file(out)
    assert torch.equal(written["conv2.weight"], source_state["module.conv2.weight"])
    assert torch.equal(written["bn1.running_var"], source_state["module.bn1.running_var"])
    assert torch.equal(written["bn2.running_var"], torch.ones(4))  # its own fresh value
