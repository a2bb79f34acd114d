"""Identifying a checkpoint's zoo architecture from its (key, shape) table.

Queries are the state_dicts of real torchvision/timm models (built without weights); the
index is restricted to a handful of architectures and kept under ``tmp_path``, so nothing
scans all of timm except the test marked slow.
"""

from __future__ import annotations

import random
import string

import pytest
import timm
import torch
import torchvision
from torch import nn

from torchgraft.zoo import arch_index
from torchgraft.zoo.identify import ARCHS_ENV, identify
from torchgraft.zoo.shipped_tables import FOLDER_ENV

ARCHS = (
    "torchvision:resnet18",
    "torchvision:resnet34",
    "torchvision:regnet_y_400mf",  # fails on pure meta: built with parameters moved to meta
    "torchvision:googlenet",  # also indexed without its auxiliary heads
    "timm:resnet18",
    "timm:resnet18d",
    "timm:efficientnet_b0",
    "timm:tf_efficientnet_b0",
)


def table(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(t.shape) for k, t in model.state_dict().items()}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One index of :data:`ARCHS` for the read-only tests of this file (built once)."""
    folder = tmp_path_factory.mktemp("identify-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TORCHGRAFT_CACHE_DIR", str(folder))
        patch.delenv(ARCHS_ENV, raising=False)
        yield folder


@pytest.fixture
def find(shared_cache, monkeypatch):
    monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(shared_cache))

    def run(model_or_table, **kwargs):
        query = table(model_or_table) if isinstance(model_or_table, nn.Module) else model_or_table
        return identify(query, architectures=kwargs.pop("architectures", ARCHS), **kwargs)

    return run


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    return torchvision.models.resnet18(weights=None)


def test_resnet18_is_both_libraries_resnet18_never_one_picked(find, resnet18):
    # timm's resnet18 has exactly torchvision's keys and shapes.
    assert table(timm.create_model("resnet18", pretrained=False)) == table(resnet18)
    found = find(resnet18)
    assert found.exact_all == ("torchvision:resnet18", "timm:resnet18")
    assert found.exact is None  # equally exact: the caller must choose (and verify)
    assert found.head == "same"
    assert found.num_classes == 1000
    assert not found.head_differs
    best = found.candidates[0]
    assert (best.keys_matched, best.shapes_matched, best.keys_total) == (122, 122, 122)
    assert best.names_match
    assert best.exact
    assert "one of torchvision:resnet18, timm:resnet18" in found.summary()
    assert "122/122 keys and shapes" in found.summary()


def test_one_library_gives_the_single_exact_spec(find, resnet18):
    found = find(resnet18, libraries=("torchvision",))
    assert found.exact == "torchvision:resnet18"
    assert found.summary() == "torchvision:resnet18 — 122/122 keys and shapes"
    assert found.to_dict()["exact"] == "torchvision:resnet18"


@pytest.mark.parametrize("prefix", ["module.", "_orig_mod.", "model.", "model._orig_mod."])
def test_wrapper_prefixes_are_stripped(find, resnet18, prefix):
    found = find({prefix + k: s for k, s in table(resnet18).items()})
    assert found.exact_all == ("torchvision:resnet18", "timm:resnet18")
    assert found.key_note == f"read '{prefix}conv1.weight' as 'conv1.weight'"


def test_new_head_is_an_exact_body_with_a_different_head(find):
    model = torchvision.models.resnet18(weights=None)
    model.fc = nn.Linear(512, 10)
    found = find(model)
    assert found.exact_all == ("torchvision:resnet18", "timm:resnet18")
    assert found.head == "different"
    assert found.head_differs
    assert found.num_classes == 10
    assert found.candidates[0].shapes_matched == 120  # all but fc.weight and fc.bias
    assert "head differs (10 classes)" in found.summary()


def test_missing_head_and_missing_counters(find, resnet18):
    headless = {k: s for k, s in table(resnet18).items() if not k.startswith("fc.")}
    found = find(headless, libraries=("torchvision",))
    assert (found.exact, found.head) == ("torchvision:resnet18", "absent")
    # Exporters often drop BatchNorm's num_batches_tracked; the weights are still exact.
    weights_only = {k: s for k, s in table(resnet18).items() if "num_batches" not in k}
    found = find(weights_only, libraries=("torchvision",))
    assert (found.exact, found.head) == ("torchvision:resnet18", "same")
    assert found.candidates[0].keys_matched == 102


def _renamed(keys, seed=0):
    """Every non-numeric key component replaced by a random token (numbers kept)."""
    rng = random.Random(seed)
    tokens: dict[str, str] = {}
    result = {}
    for key, shape in keys.items():
        parts = [
            p
            if p.isdigit()
            else tokens.setdefault(p, "".join(rng.choices(string.ascii_lowercase, k=8)))
            for p in key.split(".")
        ]
        result[".".join(parts)] = shape
    return result


def test_renamed_checkpoint_is_found_by_its_shapes(find, resnet18):
    found = find(_renamed(table(resnet18)))
    assert found.exact_all == ()
    assert set(found.same_shapes) == {"torchvision:resnet18", "timm:resnet18"}
    top = found.candidates[:2]
    assert {c.spec for c in top} == {"torchvision:resnet18", "timm:resnet18"}
    assert all(not c.names_match and c.shapes_shared == 122 and c.score == 1.0 for c in top)
    assert found.summary().startswith("not identified by name; same shapes as")


def test_renamed_and_retargeted_still_ranks_first(find):
    model = torchvision.models.resnet18(weights=None, num_classes=10)
    found = find(_renamed(table(model), seed=1))
    assert found.exact_all == ()
    assert found.same_shapes == ()
    assert {c.spec for c in found.candidates[:2]} == {"torchvision:resnet18", "timm:resnet18"}
    assert found.candidates[0].shapes_shared == 120
    assert found.summary().startswith("not identified; nearest: ")


def test_efficientnet_b0_and_its_tf_twin_are_both_exact(find):
    found = find(timm.create_model("tf_efficientnet_b0", pretrained=False))
    assert found.exact_all == ("timm:efficientnet_b0", "timm:tf_efficientnet_b0")
    assert found.exact is None


def test_near_architecture_is_the_nearest_candidate(find):
    found = find(timm.create_model("resnet26d", pretrained=False))  # not in the index
    assert found.exact_all == ()
    assert found.candidates[0].spec == "timm:resnet18d"
    assert found.candidates == tuple(sorted(found.candidates, key=lambda c: -c.score))


def test_builders_that_fail_on_meta_are_still_indexed(find):
    # RegNet computes its widths with tensors (.tolist() is impossible on meta).
    found = find(torchvision.models.regnet_y_400mf(weights=None))
    assert found.exact == "torchvision:regnet_y_400mf"
    # torchvision's pretrained GoogLeNet has no auxiliary heads.
    plain = torchvision.models.googlenet(weights=None, aux_logits=False, init_weights=False)
    found = find(plain)
    assert found.exact == "torchvision:googlenet"
    assert found.candidates[0].variant == "aux_logits=False"


def test_unrelated_model_is_not_identified(find):
    model = nn.Sequential(nn.Conv2d(1, 6, 5), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 24 * 24, 10))
    found = find(model, limit=3)
    assert found.exact is None
    assert found.exact_all == ()
    assert found.same_shapes == ()
    assert len(found.candidates) <= 3
    assert found.summary().startswith("not identified")


def test_unknown_architecture_is_recorded_not_raised(find, resnet18):
    found = find(resnet18, architectures=["torchvision:resnet18", "timm:no_such_net"])
    assert found.exact_all == ("torchvision:resnet18",)
    assert found.unindexed >= 1
    with pytest.raises(ValueError, match="library:name"):
        find(resnet18, architectures=["resnet18"])


# --------------------------------------------------------------------------- the index file


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """An empty cache, and no shipped tables: the index is built (tests/zoo/test_shipped_tables.py
    covers the shipped start)."""
    monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv(FOLDER_ENV, "")
    monkeypatch.delenv(ARCHS_ENV, raising=False)
    return tmp_path / "cache"


def _index_files(cache):
    return sorted((cache / "arch-index").rglob("*.npz"))


def test_index_is_reused_not_rebuilt(own_cache, resnet18):
    query = table(resnet18)
    before = arch_index.builds["torchvision"]
    assert identify(query, architectures=["torchvision:resnet18"]).exact
    assert arch_index.builds["torchvision"] == before + 1
    (path,) = _index_files(own_cache)
    stamp = path.stat().st_mtime_ns
    assert identify(query, architectures=["torchvision:resnet18"]).exact
    assert arch_index.builds["torchvision"] == before + 1
    assert path.stat().st_mtime_ns == stamp


def test_index_grows_lazily_and_reports_builds(own_cache, resnet18):
    calls = []

    def note(library, count):
        calls.append((library, count))

    identify(table(resnet18), architectures=["torchvision:resnet18"], on_build=note)
    identify(table(resnet18), architectures=["torchvision:resnet18"], on_build=note)
    both = ["torchvision:resnet18", "torchvision:resnet34", "torchvision:alexnet"]
    identify(table(resnet18), architectures=both, on_build=note)
    assert calls == [("torchvision", 1), ("torchvision", 2)]  # only what was missing


def test_an_index_build_reports_its_progress(own_cache, resnet18):
    steps = []
    specs = ["torchvision:resnet18", "torchvision:resnet34", "torchvision:alexnet"]
    identify(table(resnet18), architectures=specs, on_progress=lambda *step: steps.append(step))
    assert steps == [("torchvision", 1, 3), ("torchvision", 2, 3), ("torchvision", 3, 3)]
    identify(table(resnet18), architectures=specs, on_progress=lambda *step: steps.append(step))
    assert len(steps) == 3  # nothing left to build: no progress to report


def test_new_library_version_gets_a_new_index(own_cache, resnet18, monkeypatch):
    identify(table(resnet18), architectures=["torchvision:resnet18"])
    before = arch_index.builds["torchvision"]
    monkeypatch.setattr(torchvision, "__version__", "0.0.0+test")
    found = identify(table(resnet18), architectures=["torchvision:resnet18"])
    assert found.exact == "torchvision:resnet18"
    assert arch_index.builds["torchvision"] == before + 1
    names = [p.name for p in _index_files(own_cache)]
    assert "torchvision-0.0.0+test.npz" in names
    assert len(names) == 2


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_damaged_index_is_rebuilt(own_cache, resnet18, damage):
    identify(table(resnet18), architectures=["torchvision:resnet18"])
    (path,) = _index_files(own_cache)
    data = path.read_bytes()
    path.write_bytes(
        {"truncate": data[: len(data) // 2], "garbage": b"\x00junk" * 99}.get(damage, b"")
    )
    before = arch_index.builds["torchvision"]
    found = identify(table(resnet18), architectures=["torchvision:resnet18"])
    assert found.exact == "torchvision:resnet18"
    assert arch_index.builds["torchvision"] == before + 1
    assert path.read_bytes()[:2] == b"PK"  # a whole .npz again


def test_interrupted_build_keeps_what_it_did(own_cache, monkeypatch):
    real = arch_index.arch_table
    calls = []

    def interrupted(library, name, **kwargs):
        calls.append(name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(library, name, **kwargs)

    monkeypatch.setattr(arch_index, "arch_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        arch_index.load_index("torchvision", ["resnet18", "alexnet", "resnet34"])
    monkeypatch.setattr(arch_index, "arch_table", real)
    before = arch_index.builds["torchvision"]
    index = arch_index.load_index("torchvision", ["resnet18", "alexnet", "resnet34"])
    assert arch_index.builds["torchvision"] == before + 2  # resnet18 was kept
    assert [e["name"] for e in index.entries] == ["resnet18", "alexnet", "resnet34"]


def test_a_pathologically_slow_build_is_skipped_and_recorded(own_cache, monkeypatch):
    from torchgraft.zoo import meta_build

    monkeypatch.setattr(meta_build, "BUILD_SECONDS", 1e-4)
    index = arch_index.load_index("torchvision", ["resnet18"])
    assert index.entries == []
    assert "took longer than" in index.failed["resnet18"]
    assert torch.empty(1).device.type == "cpu"  # given up cleanly: no meta default left over
    # Recorded: not retried on every call (only with the next torchvision version).
    monkeypatch.setattr(meta_build, "BUILD_SECONDS", 60.0)
    before = arch_index.builds["torchvision"]
    arch_index.load_index("torchvision", ["resnet18"])
    assert arch_index.builds["torchvision"] == before


def test_a_read_only_cache_still_identifies(tmp_path, monkeypatch, resnet18):
    monkeypatch.setenv(FOLDER_ENV, "")
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TORCHGRAFT_CACHE_DIR", str(blocked))
    found = identify(table(resnet18), architectures=["torchvision:resnet18"])
    assert found.exact == "torchvision:resnet18"  # built in memory, not kept


def test_index_builds_without_tensor_memory(own_cache):
    """Building on meta allocates no storage: a 4.6 GB model indexes in a moment."""
    index = arch_index.load_index("torchvision", ["vit_h_14"])
    (entry,) = [e for e in index.entries if e["name"] == "vit_h_14"]
    assert entry["head"] == {"heads.head.weight": [1000, 1280], "heads.head.bias": [1000]}


@pytest.mark.slow
def test_every_torchvision_builder_is_indexed(own_cache):
    index = arch_index.load_index("torchvision")
    assert index.failed == {}
    names = {e["name"] for e in index.entries}
    assert names == set(torchvision.models.list_models(module=torchvision.models))
    found = identify(table(torchvision.models.resnet50(weights=None)), libraries=["torchvision"])
    assert found.exact == "torchvision:resnet50"
    assert found.summary() == "torchvision:resnet50 — 320/320 keys and shapes"


def test_meta_build_does_not_touch_torch_defaults():
    """The fallback patches nn.Module only while building."""
    register = nn.Module.register_parameter
    arch_index.arch_table("torchvision", "regnet_x_400mf")
    assert nn.Module.register_parameter is register
    assert torch.empty(1).device.type == "cpu"
