"""Sharded weights in the Hugging Face cache layout read; links leaving the cache do not.

The cache (``huggingface_hub``) keeps each model as ``models--org--name/`` holding
``blobs/<hash>`` (the files) and ``snapshots/<revision>/`` (links named like the files,
pointing at ``../../blobs/<hash>``). A shard index in a snapshot names its shards by file
name; each resolves into ``blobs/``, outside the snapshot folder but inside the model's.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from torchgraft.checkpoint.read import read_checkpoint
from torchgraft.errors import CheckpointError

STATE = {"a.weight": torch.arange(6.0).reshape(2, 3), "b.bias": torch.ones(3)}


def _blob(repo: Path, source: Path) -> str:
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    source.replace(repo / "blobs" / digest)
    return digest


def _hf_cache(root: Path, safetensors: bool = True) -> Path:
    """``root/models--org--tiny`` with one snapshot of a two-shard model; the snapshot."""
    repo = root / "models--org--tiny"
    (repo / "blobs").mkdir(parents=True)
    snapshot = repo / "snapshots" / "0123abcd"
    snapshot.mkdir(parents=True)
    suffix = "safetensors" if safetensors else "bin"
    weight_map = {}
    for number, key in enumerate(STATE, start=1):
        name = f"model-0000{number}-of-00002.{suffix}"
        staged = root / name
        save_file({key: STATE[key]}, staged) if safetensors else torch.save(
            {key: STATE[key]}, staged
        )
        (snapshot / name).symlink_to(Path("../../blobs") / _blob(repo, staged))
        weight_map[key] = name
    index = "model.safetensors.index.json" if safetensors else "pytorch_model.bin.index.json"
    staged = root / index
    staged.write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (snapshot / index).symlink_to(Path("../../blobs") / _blob(repo, staged))
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abcd")
    return snapshot


@pytest.mark.parametrize("safetensors", [True, False], ids=["safetensors", "bin"])
def test_a_sharded_model_in_the_hf_cache_reads(tmp_path, safetensors):
    snapshot = _hf_cache(tmp_path, safetensors)
    checkpoint = read_checkpoint(snapshot)
    assert checkpoint.format == "hf-folder"
    assert list(checkpoint.tensors) == list(STATE)
    for key, tensor in STATE.items():
        assert torch.equal(checkpoint.tensors[key], tensor)


def test_a_shard_linking_outside_the_cache_repo_is_refused(tmp_path):
    snapshot = _hf_cache(tmp_path)
    secret = tmp_path / "elsewhere" / "secret.safetensors"
    secret.parent.mkdir()
    save_file({"a.weight": torch.zeros(2, 3)}, secret)
    shard = snapshot / "model-00001-of-00002.safetensors"
    shard.unlink()
    shard.symlink_to(os.path.relpath(secret, snapshot))
    with pytest.raises(CheckpointError, match="outside the folder") as refused:
        read_checkpoint(snapshot)
    assert "model-00001-of-00002.safetensors" in str(refused.value)


def test_another_models_blobs_are_outside_too(tmp_path):
    snapshot = _hf_cache(tmp_path / "one")
    other = _hf_cache(tmp_path / "two")
    shard = snapshot / "model-00001-of-00002.safetensors"
    target = (other / "model-00001-of-00002.safetensors").resolve()
    shard.unlink()
    shard.symlink_to(target)
    with pytest.raises(CheckpointError, match="outside the folder"):
        read_checkpoint(snapshot)


def test_outside_a_cache_links_must_stay_in_the_folder(tmp_path):
    # A plain folder named like a snapshot but with no blobs/ beside snapshots/: the folder
    # itself is the boundary.
    folder = tmp_path / "snapshots" / "rev"
    folder.mkdir(parents=True)
    save_file({"a.weight": STATE["a.weight"]}, tmp_path / "outside.safetensors")
    save_file({"b.bias": STATE["b.bias"]}, folder / "inside.safetensors")
    (folder / "model-00001-of-00002.safetensors").symlink_to("../../outside.safetensors")
    (folder / "model-00002-of-00002.safetensors").symlink_to("inside.safetensors")
    index = {"weight_map": {"a.weight": "model-00001-of-00002.safetensors",
                            "b.bias": "model-00002-of-00002.safetensors"}}  # fmt: skip
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="outside the folder"):
        read_checkpoint(folder)
    (folder / "model-00001-of-00002.safetensors").unlink()
    (folder / "model-00001-of-00002.safetensors").symlink_to("inside.safetensors")
    index["weight_map"]["a.weight"] = "model-00002-of-00002.safetensors"
    index["weight_map"]["b.bias"] = "model-00002-of-00002.safetensors"
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match=r"'a\.weight' is not in its shard"):
        read_checkpoint(folder)  # the link inside the folder was followed, and read
