"""The zoo's tables shipped with the package: true to the installed libraries, an index from
them equal to a built one, and a damaged or foreign file never trusted."""

from __future__ import annotations

import json
import lzma

import numpy as np
import pytest
import timm
import torchvision

from torchgraft.zoo import arch_index, shipped_tables
from torchgraft.zoo.identify import ARCHS_ENV, identify
from torchgraft.zoo.shipped_tables import (
    FOLDER_ENV,
    ShippedTables,
    public_version,
    read_shipped,
    write,
)

#: Builders of every kind the zoo has: torchvision's and timm's convnets, transformers,
#: a variant build (GoogLeNet without auxiliary heads) and the default run's model.
SAMPLE = {
    "torchvision": ("resnet50", "googlenet", "vit_b_16", "efficientnet_b0", "regnet_y_400mf"),
    "timm": (
        "tf_efficientnet_lite0",
        "vit_base_patch16_224",
        "convnext_tiny",
        "mobilenetv3_large_100",
        "swin_tiny_patch4_window7_224",
        "resnet50",
    ),
}
LIBRARIES = {"timm": timm, "torchvision": torchvision}


@pytest.fixture(scope="module", params=sorted(SAMPLE))
def shipped(request) -> ShippedTables:
    library = request.param
    found = read_shipped(library, arch_index.library_version(library))
    if found is None:
        pytest.skip(f"no shipped tables for {library} {arch_index.library_version(library)}")
    return found


def test_the_package_ships_tables_for_the_versions_it_installs():
    """The README's install gets these versions: a missing file would make every first
    identification build the zoo (minutes)."""
    for library in SAMPLE:
        version = arch_index.library_version(library)
        assert read_shipped(library, version) is not None, (library, version)


def test_shipped_tables_are_what_the_installed_library_builds(shipped):
    rows = {(name, variant): (table, head) for name, variant, table, head in shipped.rows}
    for name in SAMPLE[shipped.library]:
        built, failed = arch_index.arch_rows(shipped.library, name)
        assert not failed
        for _, variant, table, head in built:
            assert rows[(name, variant)] == (table, head), (name, variant)


def test_shipped_tables_cover_every_architecture_listed(shipped):
    names = {name for name, _, _, _ in shipped.rows} | set(shipped.failed)
    assert names == set(arch_index.all_names(shipped.library))


def test_an_index_from_tables_at_once_equals_one_added_a_table_at_a_time(shipped):
    rows = shipped.rows[:: max(1, len(shipped.rows) // 40)]
    together = arch_index.ArchIndex(shipped.library, "x")
    together.add_tables(rows)
    one_by_one = arch_index.ArchIndex(shipped.library, "x")
    for row in rows:
        one_by_one.add(*row)
    assert together.entries == one_by_one.entries
    for kind in ("keys", "pairs", "shapes", "offsets"):
        assert np.array_equal(together.arrays[kind], one_by_one.arrays[kind]), kind
    offsets = together.arrays["offsets"]
    for position, (_, _, table, _) in enumerate(rows):  # and equal to the query's own codes
        codes = arch_index.table_codes(table)
        start, end = offsets[position], offsets[position + 1]
        for kind in ("keys", "pairs", "shapes"):
            assert np.array_equal(together.arrays[kind][start:end], codes[kind]), kind


def test_a_cold_cache_identifies_without_building(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(ARCHS_ENV, raising=False)
    monkeypatch.delenv(FOLDER_ENV, raising=False)
    before = dict(arch_index.builds)
    model = timm.create_model("mobilenetv3_large_100", pretrained=False, num_classes=7)
    found = identify({k: tuple(t.shape) for k, t in model.state_dict().items()})
    assert "timm:mobilenetv3_large_100" in found.exact_all
    assert found.head == "different"
    assert found.num_classes == 7
    assert dict(arch_index.builds) == before  # nothing built
    # Kept in the cache: later processes read the index, not the tables.
    assert sorted(p.name.split("-")[0] for p in (tmp_path / "cache").rglob("*.npz")) == [
        "timm",
        "torchvision",
    ]


def test_a_model_registered_in_the_process_is_still_built(tmp_path, monkeypatch):
    """Shipped tables cover the library's own list; anything else asked for is built."""
    monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    listed = arch_index.all_names("torchvision")
    monkeypatch.setattr(arch_index, "all_names", lambda library: [*listed, "not_a_model"])
    before = arch_index.builds["torchvision"]
    index = arch_index.load_index("torchvision")
    assert arch_index.builds["torchvision"] == before + 1
    assert "not_a_model" in index.failed


def _copy_parts(library: str) -> dict[str, np.ndarray]:
    path = shipped_tables.shipped_path(library, arch_index.library_version(library))
    with np.load(path) as stored:
        return {name: stored[name] for name in stored.files}


def _save(folder, library, parts) -> None:
    folder.mkdir(exist_ok=True)
    name = f"{library}-{public_version(arch_index.library_version(library))}.npz"
    with (folder / name).open("wb") as handle:
        np.savez(handle, **parts)


def _packed(data: bytes) -> np.ndarray:
    return np.frombuffer(lzma.compress(data), dtype=np.uint8)


def _header(parts) -> dict:
    return json.loads(lzma.decompress(parts["header"].tobytes()))


@pytest.mark.parametrize(
    "damage",
    ["truncated", "other version", "index out of range", "too large when unpacked", "garbage"],
)
def test_a_damaged_or_foreign_file_is_not_used(tmp_path, monkeypatch, damage):
    library = "torchvision"
    version = arch_index.library_version(library)
    parts = _copy_parts(library)
    folder = tmp_path / "tables"
    if damage == "truncated":
        _save(folder, library, parts)
        path = next(folder.iterdir())
        path.write_bytes(path.read_bytes()[:-500])
    elif damage == "other version":
        header = _header(parts)
        header["version"] = "0.0.1"
        _save(folder, library, {**parts, "header": _packed(json.dumps(header).encode())})
    elif damage == "index out of range":
        ids = np.frombuffer(lzma.decompress(parts["shape_ids"].tobytes()), dtype="<u4").copy()
        ids[-1] = 10**6
        _save(folder, library, {**parts, "shape_ids": _packed(ids.tobytes())})
    elif damage == "too large when unpacked":
        monkeypatch.setattr(shipped_tables, "MAX_PART_BYTES", 1000)
        _save(folder, library, parts)
    else:
        folder.mkdir()
        (folder / f"{library}-{public_version(version)}.npz").write_bytes(b"PK\x03\x04" * 99)
    assert read_shipped(library, version, folder) is None
    # The index is then built, as without shipped tables.
    monkeypatch.setenv(FOLDER_ENV, str(folder))
    monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    before = arch_index.builds[library]
    index = arch_index.load_index(library, ["resnet18"])
    assert arch_index.builds[library] == before + 1
    assert [e["name"] for e in index.entries] == ["resnet18"]


def test_written_tables_read_back_equal(tmp_path):
    table = {"conv.weight": (8, 3, 3, 3), "bn.num_batches_tracked": (), "fc.weight": (10, 8)}
    tables = ShippedTables(
        "torchvision",
        "9.9.9+cpu",
        [("tiny", "", table, {"fc.weight": (10, 8)}), ("tiny", "half", {"fc.weight": (5, 8)}, {})],
        {"broken": "RuntimeError: no"},
    )
    path = write(tables, tmp_path)
    assert path.name == "torchvision-9.9.9.npz"
    back = read_shipped("torchvision", "9.9.9", tmp_path)
    assert back is not None
    assert back.rows == tables.rows
    assert back.failed == tables.failed
    assert read_shipped("timm", "9.9.9", tmp_path) is None  # another library's name
