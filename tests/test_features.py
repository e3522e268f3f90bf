"""The feature cache: hits, keys, corruption, deterministic views, ls/clear, subset images.

Uses a tiny real open_clip model (built from a custom config in the test) wrapped in
fewshot's Backbone, and a fake in-memory Dataset.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from PIL import Image

from fewshot.backbones import Backbone
from fewshot.datasets.base import Dataset
from fewshot.encoding import SubsetImages, encode_items, encode_views
from fewshot.features import FeatureCache, FeatureKey, feature_key
from fewshot.types import BackboneSpec, ConfigError, DatasetSpec, FeatureSet, Item, Split, Splits

N_ITEMS = 12


class FakeDataset(Dataset):
    """A few random-noise PIL images held in memory; counts image loads."""

    name: ClassVar[str] = "fake"

    def __init__(self, name: str = "fake", version: str = "1") -> None:
        super().__init__(None)
        self._name, self._version = name, version
        rng = np.random.default_rng(0)
        self.items = tuple(Item(f"img/{i}.png", i % 3) for i in range(N_ITEMS))
        self.images = {
            it.path: Image.fromarray(rng.integers(0, 256, (24, 28, 3), dtype=np.uint8)) for it in self.items
        }
        self.loads = 0

    def spec(self) -> DatasetSpec:
        return DatasetSpec(self._name, ("red", "green", "blue"), "a photo of a {}.", version=self._version)

    def splits(self) -> Splits:
        split = Split("train", self.items)
        return Splits(split, split, split)

    def load_image(self, item: Item) -> Image.Image:
        self.loads += 1
        return self.images[item.path]


@pytest.fixture(scope="module")
def backbone() -> Backbone:
    torch.manual_seed(0)
    model = open_clip.CLIP(
        embed_dim=16,
        vision_cfg=CLIPVisionCfg(image_size=16, patch_size=8, layers=1, width=32, head_width=16),
        text_cfg=CLIPTextCfg(context_length=8, vocab_size=64, width=32, heads=2, layers=1),
    )
    preprocess = open_clip.image_transform(16, is_train=False)
    spec = BackboneSpec("open_clip", "tiny", "test")
    return Backbone(spec, model, preprocess, tokenizer=lambda texts: torch.zeros(len(texts), 8), device="cpu")


@pytest.fixture
def data() -> FakeDataset:
    return FakeDataset()


@pytest.fixture
def cache(tmp_path: Path) -> FeatureCache:
    return FeatureCache(tmp_path / "cache")


def _reference(backbone: Backbone, data: FakeDataset, items: tuple[Item, ...]) -> torch.Tensor:
    """Features computed directly through open_clip, without fewshot.features."""
    images = torch.stack([backbone.preprocess(data.images[it.path]) for it in items])
    with torch.no_grad():
        return cast(Any, backbone.model).encode_image(images).float()  # type: ignore[no-any-return]


def test_encode_items_matches_direct_encoding_and_hits_cache(
    backbone: Backbone, data: FakeDataset, cache: FeatureCache
) -> None:
    first = encode_items(backbone, data, data.items, cache=cache, batch_size=5)
    assert first.features.shape == (N_ITEMS, 16)
    torch.testing.assert_close(first.features, _reference(backbone, data, data.items), atol=1e-5, rtol=1e-5)
    assert first.labels.tolist() == [i % 3 for i in range(N_ITEMS)]
    assert first.ids == tuple(it.path for it in data.items)
    assert cache.images_encoded == N_ITEMS and data.loads == N_ITEMS

    second = encode_items(backbone, data, data.items, cache=cache, batch_size=7)
    assert cache.images_encoded == N_ITEMS and data.loads == N_ITEMS  # nothing encoded or loaded
    assert cache.hits == 1
    assert torch.equal(second.features, first.features) and second.key == first.key

    # A Split of the same items records its hash as split hash: another entry, same values.
    from_split = encode_items(backbone, data, Split("train", data.items), cache=cache)
    assert from_split.key != first.key
    torch.testing.assert_close(from_split.features, first.features)


def test_get_or_compute_calls_fn_once(cache: FeatureCache, backbone: Backbone, data: FakeDataset) -> None:
    key = feature_key(backbone, data, data.items[:2])
    calls = []

    def fn() -> FeatureSet:
        calls.append(1)
        return FeatureSet(torch.arange(6.0).view(2, 3), torch.tensor([0, 1]), ("a", "b"))

    out1 = cache.get_or_compute(key, fn)
    out2 = cache.get_or_compute(key, fn)
    assert len(calls) == 1
    assert torch.equal(out2.features, torch.arange(6.0).view(2, 3)) and out2.ids == ("a", "b")
    assert out1.key == out2.key == key.digest


def _other(value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if value is None:
        return 0
    return f"{value}-changed"


def test_every_key_field_changes_the_digest(backbone: Backbone, data: FakeDataset) -> None:
    key = feature_key(backbone, data, data.items, view=0, seed=1)
    assert key == feature_key(backbone, data, data.items, view=0, seed=1)
    assert key.digest == FeatureKey(**key.to_dict()).digest  # stable, from values only
    assert key.normalized is False  # raw features are stored
    digests = {key.digest}
    for field in dataclasses.fields(FeatureKey):
        changed = dataclasses.replace(key, **{field.name: _other(getattr(key, field.name))})
        digests.add(changed.digest)
    assert len(digests) == 1 + len(dataclasses.fields(FeatureKey))
    # The inputs feed the right fields.
    assert feature_key(backbone, data, data.items[:-1]).items_hash != key.items_hash
    assert feature_key(backbone, FakeDataset(version="2"), data.items).digest != key.digest
    test_key = feature_key(backbone, data, data.items)
    assert test_key.transform != key.transform and test_key.view is None
    assert test_key.seed is None  # test-transform features do not depend on the run seed
    assert feature_key(backbone, data, data.items, seed=2) == test_key
    assert feature_key(backbone, data, data.items, view=0, seed=2).digest != key.digest
    assert key.precision == "float32"
    # The run's precision, not whatever autocast happens to be active, names the entry.
    assert feature_key(backbone, data, data.items, precision="bf16").precision == "float32+autocast-bfloat16"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert feature_key(backbone, data, data.items).precision == "float32"
    with pytest.raises(ValueError, match="run seed"):
        feature_key(backbone, data, data.items, view=0)


def _entry_files(cache: FeatureCache) -> list[Path]:
    return sorted(p for p in cache.root.rglob("*") if p.is_file())


@pytest.mark.parametrize("damage", ["truncate", "flip", "sidecar", "orphan"])
def test_damaged_entry_is_recomputed(
    backbone: Backbone, data: FakeDataset, cache: FeatureCache, damage: str
) -> None:
    good = encode_items(backbone, data, data.items, cache=cache)
    tensor_path = cache.path(feature_key(backbone, data, data.items))
    meta_path = tensor_path.with_suffix(".json")
    blob = tensor_path.read_bytes()
    if damage == "truncate":
        tensor_path.write_bytes(blob[: len(blob) // 2])
    elif damage == "flip":
        tensor_path.write_bytes(blob[:-40] + bytes([blob[-40] ^ 0xFF]) + blob[-39:])
    elif damage == "sidecar":
        meta_path.write_text("{")
    else:  # a writer killed between the two files: tensor present, sidecar missing
        meta_path.unlink()
    if damage == "orphan":
        again = encode_items(backbone, data, data.items, cache=cache)
    else:
        with pytest.warns(UserWarning, match="corrupt"):
            again = encode_items(backbone, data, data.items, cache=cache)
    assert cache.images_encoded == 2 * N_ITEMS  # recomputed
    torch.testing.assert_close(again.features, good.features)
    # The entry is whole again: the next call is a hit.
    encode_items(backbone, data, data.items, cache=cache)
    assert cache.images_encoded == 2 * N_ITEMS
    assert tensor_path.read_bytes() and meta_path.exists()


def test_views_are_deterministic_and_distinct(backbone: Backbone, data: FakeDataset, tmp_path: Path) -> None:
    cache_a, cache_b = FeatureCache(tmp_path / "a"), FeatureCache(tmp_path / "b")
    torch.manual_seed(123)
    expected_draw = torch.rand(3)
    torch.manual_seed(123)
    v0 = encode_items(backbone, data, data.items, cache=cache_a, view=0, seed=1, batch_size=4)
    assert torch.equal(torch.rand(3), expected_draw)  # the global RNG was left alone
    torch.manual_seed(999)  # a different global state must not matter
    v0_again = encode_items(backbone, data, data.items, cache=cache_b, view=0, seed=1, batch_size=5)
    torch.testing.assert_close(v0_again.features, v0.features)
    # Item-keyed: view 0 of an item is the same crop in another subset, order and batch.
    subset = data.items[7:2:-2]
    part = encode_items(backbone, data, subset, cache=cache_b, view=0, seed=1, batch_size=2)
    torch.testing.assert_close(part.features, v0.features[[7, 5, 3]])

    v1 = encode_items(backbone, data, data.items, cache=cache_a, view=1, seed=1)
    test = encode_items(backbone, data, data.items, cache=cache_a)
    for other in (v1, test):
        differs = (other.features - v0.features).abs().amax(dim=1) > 1e-4
        assert differs.all()


def test_each_run_seed_draws_its_own_views(
    backbone: Backbone, data: FakeDataset, cache: FeatureCache
) -> None:
    """Seeds 1-3 train on different crops (as the official loader gives every run fresh
    ones); one seed always gets the same crops, cold cache or warm."""
    seed1 = encode_views(backbone, data, data.items, 2, cache=cache, seed=1)
    seed2 = encode_views(backbone, data, data.items, 2, cache=cache, seed=2)
    differs = (seed1.features - seed2.features).abs().amax(dim=1) > 1e-4
    assert differs.all() and seed1.key != seed2.key
    cold = encode_views(backbone, data, data.items, 2, cache=FeatureCache(cache.root / "cold"), seed=1)
    assert torch.equal(cold.features, seed1.features)


def test_precision_runs_the_encoder_under_autocast(
    backbone: Backbone, data: FakeDataset, cache: FeatureCache
) -> None:
    fp32 = encode_items(backbone, data, data.items, cache=cache)
    bf16 = encode_items(backbone, data, data.items, cache=cache, precision="bf16")
    assert bf16.key != fp32.key  # two entries
    assert not torch.equal(bf16.features, fp32.features)  # bf16 arithmetic really ran
    torch.testing.assert_close(bf16.features, fp32.features, atol=0.1, rtol=0.05)


def test_encode_views_is_view_major_and_one_pass(
    backbone: Backbone, data: FakeDataset, cache: FeatureCache
) -> None:
    v1 = encode_items(backbone, data, data.items, cache=cache, view=1, seed=1)
    data.loads, cache.images_encoded = 0, 0
    out = encode_views(backbone, data, data.items, 3, cache=cache, seed=1, batch_size=8)
    n = N_ITEMS
    assert out.features.shape == (3 * n, 16)
    assert data.loads == n  # the two missing views (0 and 2) came from one pass over the images
    assert cache.images_encoded == 2 * n
    assert out.labels.tolist() == [i % 3 for i in range(n)] * 3
    assert out.ids == tuple(it.path for it in data.items) * 3
    torch.testing.assert_close(out.features[n : 2 * n], v1.features)
    for v in (0, 2):
        alone = encode_items(backbone, data, data.items, cache=FeatureCache(cache.root / "x"), view=v, seed=1)
        torch.testing.assert_close(out.features[v * n : (v + 1) * n], alone.features, atol=1e-5, rtol=1e-5)
    again = encode_views(backbone, data, data.items, 3, cache=cache, seed=1)
    assert torch.equal(again.features, out.features) and again.key == out.key
    with pytest.raises(ConfigError):
        encode_views(backbone, data, data.items, 0, cache=cache, seed=1)


def test_progress_is_driven(backbone: Backbone, data: FakeDataset, cache: FeatureCache) -> None:
    seen: list[tuple[int, str]] = []
    consumed = []

    def progress(total: int, description: str) -> Iterator[int]:
        seen.append((total, description))
        for i in range(total):
            consumed.append(i)
            yield i

    encode_items(backbone, data, data.items, cache=cache, batch_size=5, progress=progress)
    assert seen == [(3, "encoding fake")] and consumed == [0, 1, 2]


def test_ls_clear_and_size(backbone: Backbone, cache: FeatureCache) -> None:
    a, b = FakeDataset("fake-a"), FakeDataset("fake-b")
    encode_items(backbone, a, a.items, cache=cache)
    encode_items(backbone, a, a.items, cache=cache, view=0, seed=1)
    encode_items(backbone, b, b.items[:5], cache=cache)
    entries = cache.ls()
    assert sorted((e["dataset"], e["n"], e["dim"], str(e["view"])) for e in entries) == [
        ("fake-a", N_ITEMS, 16, "0"),
        ("fake-a", N_ITEMS, 16, "None"),
        ("fake-b", 5, 16, "None"),
    ]
    assert {e["backbone"] for e in entries} == {"tiny:test"}
    assert all(e["created"] and Path(e["path"]).is_file() for e in entries)
    total = sum(e["size"] for e in entries)
    assert cache.size_bytes() == total == sum(p.stat().st_size for p in _entry_files(cache))

    assert cache.clear(backbone="other:model") == 0
    assert cache.clear(dataset="fake-a") == 2
    assert [e["dataset"] for e in cache.ls()] == ["fake-b"]
    assert cache.clear(backbone="tiny:test") == 1
    assert cache.ls() == [] and cache.size_bytes() == 0


def test_writes_are_atomic(
    backbone: Backbone, data: FakeDataset, cache: FeatureCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    encode_items(backbone, data, data.items, cache=cache)
    encode_views(backbone, data, data.items, 2, cache=cache, seed=1)
    names = [p.name for p in _entry_files(cache)]
    assert len(names) == 6 and all(n.endswith((".pt", ".json")) and not n.startswith(".") for n in names)

    # A failure while moving the file into place leaves neither an entry nor a temp file.
    def fail(src: object, dst: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        encode_items(backbone, data, data.items[:3], cache=cache)
    assert [p.name for p in _entry_files(cache)] == names


def test_default_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "here"))
    assert FeatureCache().root == tmp_path / "here"
    monkeypatch.delenv("FEWSHOT_CACHE")
    assert FeatureCache().root.name == "fewshot"


def test_subset_images(backbone: Backbone, data: FakeDataset) -> None:
    items = data.items[:6]  # labels 0,1,2,0,1,2
    source = SubsetImages(data, items, backbone, relabel={0: 2, 1: 0, 2: 1})
    assert len(source) == 6

    plain = list(source.loader(4, augment=False, shuffle=False))
    assert [tuple(x.shape) for x, _ in plain] == [(4, 3, 16, 16), (2, 3, 16, 16)]
    images = torch.cat([x for x, _ in plain])
    labels = torch.cat([y for _, y in plain])
    assert labels.tolist() == [2, 0, 1, 2, 0, 1]
    expected = torch.stack([backbone.preprocess(data.images[it.path]) for it in items])
    torch.testing.assert_close(images, expected)

    def passes(seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        loader = source.loader(6, augment=True, shuffle=True, generator=torch.Generator().manual_seed(seed))
        return [next(iter(loader)), next(iter(loader))]  # two epochs

    torch.manual_seed(1)
    first = passes(0)
    torch.manual_seed(2)  # the global RNG plays no part
    again = passes(0)
    for (x1, y1), (x2, y2) in zip(first, again, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)  # reproducible from the generator
    assert not torch.equal(first[0][0], first[1][0])  # fresh crops (and order) each epoch
    assert sorted(first[0][1].tolist()) == [0, 0, 1, 1, 2, 2]
    ordered = source.loader(6, augment=True, shuffle=False, generator=torch.Generator().manual_seed(0))
    (x1, y1), (x2, y2) = next(iter(ordered)), next(iter(ordered))
    assert torch.equal(y1, y2) and not torch.equal(x1, x2)  # same order, new crops
    assert not torch.equal(x1, expected)

    assert len(source.loader(4, augment=True, shuffle=True, drop_last=True)) == 1
    with pytest.raises(Exception, match="label space"):
        SubsetImages(data, items, backbone, relabel={0: 0})
