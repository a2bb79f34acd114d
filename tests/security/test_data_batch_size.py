"""A batch larger than the data, or than memory allows (issue 17, item 13): ``--data.batch_size
100000`` on the digits grew to 22 GB and was killed by the kernel. A batch is clamped to the
split it comes from (the loaders already give no more), and one whose step would not fit in
the memory left is refused with a ConfigError naming the option, before anything is
allocated. The run itself is tested under a real address-space limit (``RLIMIT_AS``), so a
regression is an error, not a machine brought down.
"""

from __future__ import annotations

import resource
import subprocess
import sys

import pytest
import yaml

from support import tiny_config, write_digit_folder
from torchgraft.data.batch_size import (
    MEMORY_SHARE,
    available_memory,
    check_batch,
    clamp_note,
    input_bytes,
    largest_batch,
)
from torchgraft.data.loaders import Shard
from torchgraft.data.prepare import prepare_data
from torchgraft.data.sources import discover
from torchgraft.errors import ConfigError
from torchgraft.model.spec import Preprocessing

GIB = 1 << 30


def test_a_batch_is_never_larger_than_its_split():
    assert largest_batch(100_000, 1_438) == 1_438
    assert largest_batch(32, 1_438) == 32
    assert largest_batch(32, 0) == 1
    note = clamp_note("data.batch_size", 100_000, 1_438, "train")
    assert note == "data.batch_size 100,000 is more than the 1,438 train images: batches of 1,438"
    assert clamp_note("data.batch_size", 32, 1_438, "train") is None


def test_the_largest_batch_of_prepared_data_is_this_processes_share(digit_folder):
    data = prepare_data(discover(str(digit_folder)), Preprocessing(input_size=(3, 16, 16)))
    val = len(data.source.splits["val"])
    assert data.largest_batch("val", 100_000) == val
    assert data.largest_batch("val", 2) == 2
    share = data.largest_batch("val", 100_000, Shard(rank=1, world=2))
    assert share == val - val // 2  # rank 1's contiguous slice
    largest = max(len(images) for images, _ in data.loader("val", 100_000))
    assert largest == val  # what the loader really gives: the padding target


def test_a_batch_over_the_memory_left_is_refused_naming_the_option():
    size = (3, 64, 64)
    per_image = input_bytes(1, size, augment=True) + 10_000_000  # input + activations
    available = 4 * GIB
    fits = int(MEMORY_SHARE * available // per_image)
    check_batch(fits, size, augment=True, bytes_per_image=10_000_000, available=available)
    with pytest.raises(ConfigError) as refused:
        check_batch(100_000, size, augment=True, bytes_per_image=10_000_000, available=available)
    message = str(refused.value)
    assert message.startswith("data.batch_size: a batch of 100,000 images of 3x64x64 needs")
    assert "the memory this process may use (4,096 MiB)" in message
    assert message.endswith(f"set data.batch_size to {fits} or less")


def test_the_memory_left_counts_the_address_space_limit():
    code = (
        "from torchgraft.data.batch_size import available_memory;"
        "import resource; print(available_memory(), resource.getrlimit(resource.RLIMIT_AS)[0])"
    )

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (8 * GIB, 8 * GIB))

    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, preexec_fn=limit
    )
    left, cap = map(int, out.stdout.split())
    assert cap == 8 * GIB
    assert 0 < left < 8 * GIB  # what is mapped already is not available
    assert available_memory() is not None


@pytest.mark.slow
def test_a_batch_of_100000_on_a_small_folder_is_clamped_or_refused_never_killed(
    console_script, subprocess_env, tmp_path
):
    images = write_digit_folder(tmp_path / "images")  # 36 images
    config = tiny_config(
        images,
        tmp_path / "runs",
        freeze={"policy": "head"},  # a linear probe: the feature cache pads its batches
        data={"image_size": 32, "batch_size": 100_000},
        train={"epochs": 1},
    )
    run_yaml = tmp_path / "run.yaml"
    run_yaml.write_text(yaml.safe_dump(config))

    def limit():  # 6 GB of address space: torch maps ~3.6 GB; 200,000 images would need 5
        resource.setrlimit(resource.RLIMIT_AS, (6 * GIB, 6 * GIB))

    result = subprocess.run(
        [*console_script, "train", "--config", str(run_yaml)],
        capture_output=True, text=True, env=subprocess_env, preexec_fn=limit, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr  # never a kill, never an internal error
    assert "data.batch_size 100,000 is more than the" in result.stdout  # clamped, and said
    assert (tmp_path / "runs" / "run" / "model.safetensors").exists()
