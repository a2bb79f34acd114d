"""What several processes need, checked without starting any: the global batch, SyncBatchNorm
(converted before freezing, timm's activations kept), the replica agreement check, and the
error a lost peer gives. The collectives themselves run in test_torchrun.py."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from torchgraft.engine import distributed
from torchgraft.engine import setup as run_setup
from torchgraft.engine.config.load import load_config
from torchgraft.engine.distributed import Processes, join, launch_arguments
from torchgraft.engine.replicas import check_replicas_agree, tensor_digests
from torchgraft.engine.setup import ModelSetup
from torchgraft.errors import ConfigError, TrainingError
from torchgraft.policies.freezing import freeze, pinned_norms
from torchgraft.zoo import create_model

TWO_CPUS = Processes(rank=0, world=2, local_rank=0, backend="gloo")
TWO_GPUS = Processes(rank=0, world=2, local_rank=0, backend="nccl")


def test_the_global_batch_must_split_evenly():
    config = load_config({"data": {"batch_size": 30}}, check_paths=False, check_names=False)
    with pytest.raises(
        ConfigError, match=r"data.batch_size: 30 is the global batch.*multiple of 4"
    ):
        distributed.check_processes(config, dataclasses.replace(TWO_CPUS, world=4))
    distributed.check_processes(config, TWO_CPUS)  # 30 = 2 x 15


def test_sync_batchnorm_is_refused_on_cpus():
    config = load_config({"train": {"sync_bn": True}}, check_paths=False, check_names=False)
    with pytest.raises(ConfigError, match=r"train\.sync_bn: SyncBatchNorm runs on GPUs only"):
        distributed.check_processes(config, TWO_CPUS)
    distributed.check_processes(config, TWO_GPUS)


def test_sync_batchnorm_keeps_timm_activations_and_the_freezing_policy_holds():
    model = create_model("timm:tf_efficientnet_lite0", num_classes=3, weights=None)
    activations = {
        name: type(module.act).__name__
        for name, module in model.named_modules()
        if type(module).__name__ == "BatchNormAct2d"
    }
    assert activations
    config = load_config({"train": {"sync_bn": True}}, check_paths=False, check_names=False)
    setup = ModelSetup(model, model.torchgraft_spec, {}, None)
    run_setup._synchronise_batchnorm(config, setup, TWO_GPUS)
    converted = dict(setup.model.named_modules())
    for name, activation in activations.items():
        assert type(converted[name]).__name__ == "SyncBatchNormAct"
        assert type(converted[name].act).__name__ == activation  # torch's converter drops it
    assert not any(type(m) is nn.BatchNorm2d for m in setup.model.modules())
    assert setup.model.torchgraft_spec.head_path == model.torchgraft_spec.head_path
    freeze(setup.model, "head", bn="frozen")  # after the conversion, as fit does
    pinned = set(pinned_norms(setup.model))
    assert set(activations) <= pinned  # the converted layers' statistics are fixed


class _Gathered(Processes):
    """Processes whose all_gather returns what the test says each rank holds."""

    def __init__(self, every):
        super().__init__(rank=0, world=len(every), local_rank=0, backend="gloo")
        object.__setattr__(self, "every", every)

    def all_gather(self, value):
        return self.every


def test_replicas_that_drifted_apart_stop_the_run():
    model = nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2))
    same = tensor_digests(model)
    check_replicas_agree(model, _Gathered([same, same]), epoch=0)  # agreeing: nothing happens
    drifted = dict(same)
    with torch.no_grad():
        model[1].running_mean += 1e-7  # a single changed statistic is enough
    drifted["1.running_mean"] = tensor_digests(model)["1.running_mean"]
    with pytest.raises(TrainingError, match=r"after epoch 3 .*process\(es\) \[1\].*1.running_mean"):
        check_replicas_agree(model, _Gathered([same, drifted]), epoch=2)


def test_one_process_needs_no_process_group(monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert join("auto").alone
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="start several processes with torchrun"):
        join("auto")


def test_nproc_runs_torchs_own_launcher_on_this_machine():
    arguments = launch_arguments(3, ["train", "--train.epochs", "1"])
    from torch.distributed.run import get_args_parser

    parsed = get_args_parser().parse_args(arguments)
    assert parsed.standalone
    assert parsed.nproc_per_node == "3"
    assert parsed.module
    assert parsed.training_script == "torchgraft"
    assert parsed.training_script_args == ["train", "--train.epochs", "1"]


def test_a_lost_peer_is_named_as_such_not_as_an_internal_error():
    gone = RuntimeError("[../gloo/transport/tcp/pair.cc:545] Read error: Connection reset by peer")
    assert distributed._lost_peer(gone)
    assert not distributed._lost_peer(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
