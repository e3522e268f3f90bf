"""Cache keys name the image files' bytes: data roots, changed and touched images, manifests.

Real fake trees (tests/_fake_trees.py: the real layouts, tiny real JPEGs) read by the real
readers, one tiny open_clip model, real files in tmp_path; nothing of fewshot is mocked.
File opens are counted with a Python audit hook (``sys.addaudithook``), which sees every
``open()`` of the process.
"""

from __future__ import annotations

import io
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import open_clip
import pytest
import torch
from open_clip.model import CLIPTextCfg, CLIPVisionCfg
from PIL import Image

from fewshot import runner
from fewshot.backbones import Backbone
from fewshot.datasets import get_dataset
from fewshot.datasets.base import Dataset, DatasetError
from fewshot.encoding import encode_items, encode_views
from fewshot.features import FeatureCache, feature_key
from fewshot.fingerprints import GENERATED, content_hash
from fewshot.types import BackboneSpec, FeatureSet, RunSpec, Split

from . import _fake_trees as trees

_OPENS: list[list[str]] = []  # one list per active `opened()` block


def _audit(event: str, args: tuple[object, ...]) -> None:
    if event == "open" and _OPENS and isinstance(args[0], str | os.PathLike):
        _OPENS[-1].append(os.fspath(args[0]))


sys.addaudithook(_audit)  # cannot be removed; records nothing outside `opened()`


@contextmanager
def opened(folder: Path) -> Iterator[list[str]]:
    """The files under ``folder`` opened by this process inside the block."""
    seen: list[str] = []
    _OPENS.append(seen)
    found: list[str] = []
    try:
        yield found
    finally:
        _OPENS.pop()
        found += [p for p in seen if Path(p).resolve().is_relative_to(folder.resolve())]


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


def _jpeg(colour: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buf, format="JPEG")
    return buf.getvalue()


def _recolour(folder: Path, colour: tuple[int, int, int]) -> None:
    """Every JPEG under ``folder`` rewritten as one other colour (other bytes, same paths)."""
    for file in sorted(folder.rglob("*.jpg")):
        file.write_bytes(_jpeg(colour))


def _dtd(root: Path) -> Dataset:
    trees.dtd(root)
    return get_dataset("dtd", root)


def _encode(backbone: Backbone, dataset: Dataset, split: Split, cache: FeatureCache) -> FeatureSet:
    return encode_items(backbone, dataset, split, cache=cache)


def test_two_data_roots_share_entries_only_for_identical_bytes(backbone: Backbone, tmp_path: Path) -> None:
    """Same dataset, same split file, other image bytes: each root gets its own features
    (those of a fresh cache) and encodes its own images; a byte-identical root reuses them."""
    a, b = _dtd(tmp_path / "a"), _dtd(tmp_path / "b")
    _recolour(b.path, (220, 30, 30))
    split_file = "split_zhou_DescribableTextures.json"
    assert (a.path / split_file).read_bytes() == (b.path / split_file).read_bytes()
    assert a.splits().test.hash == b.splits().test.hash
    shared = FeatureCache(tmp_path / "shared")
    n = len(a.splits().test)
    for i, data in enumerate((a, b)):
        encoded = shared.images_encoded
        got = _encode(backbone, data, data.splits().test, shared)
        assert shared.images_encoded == encoded + n  # its own images, not the other root's
        fresh = _encode(backbone, data, data.splits().test, FeatureCache(tmp_path / f"fresh{i}"))
        assert torch.equal(got.features, fresh.features) and got.key == fresh.key
    assert not torch.equal(
        _encode(backbone, a, a.splits().test, shared).features,
        _encode(backbone, b, b.splits().test, shared).features,
    )
    # A third root with a's bytes (other folder, other mtimes) shares a's entries.
    encoded = shared.images_encoded
    same_as_a = _encode(backbone, _dtd(tmp_path / "c"), a.splits().test, shared)
    assert shared.images_encoded == encoded
    assert torch.equal(same_as_a.features, _encode(backbone, a, a.splits().test, shared).features)


def _same_size_other_bytes(file: Path) -> bytes:
    old = file.read_bytes()
    shades = (trees.jpeg_bytes(s) for s in range(7))
    return next(new for new in shades if len(new) == len(old) and new != old)


def test_changing_one_image_recomputes_only_the_entries_that_contain_it(
    backbone: Backbone, tmp_path: Path
) -> None:
    data = _dtd(tmp_path / "data")
    splits = data.splits()
    cache = FeatureCache(tmp_path / "cache")
    parts = (splits.train, splits.val, splits.test)
    before = [_encode(backbone, data, split, cache) for split in parts]
    total = sum(len(split) for split in parts)
    assert cache.images_encoded == total
    for split in parts:  # unchanged files: every entry is reused
        _encode(backbone, data, split, cache)
    assert cache.images_encoded == total and cache.hits == 3

    changed = data.image_file(splits.test.items[2])
    stat = changed.stat()
    changed.write_bytes(_same_size_other_bytes(changed))
    assert changed.stat().st_size == stat.st_size and changed.stat().st_mtime_ns != stat.st_mtime_ns
    after = [_encode(backbone, data, split, cache) for split in parts]
    assert cache.images_encoded == total + len(splits.test)  # the test entry, only it
    assert cache.hits == 5
    for old, new in zip(before[:2], after[:2], strict=True):
        assert new.key == old.key and torch.equal(new.features, old.features)
    assert after[2].key != before[2].key
    rows_differ = (after[2].features != before[2].features).any(dim=1)
    assert rows_differ.tolist() == [i == 2 for i in range(len(splits.test))]


def test_touching_a_file_rehashes_it_and_reuses_the_entries(backbone: Backbone, tmp_path: Path) -> None:
    data = _dtd(tmp_path / "data")
    cache = FeatureCache(tmp_path / "cache")
    test = data.splits().test
    first = _encode(backbone, data, test, cache)
    assert cache.manifests.files_hashed == len(test)
    touched = data.image_file(test.items[0])
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with opened(data.path) as files:
        again = _encode(backbone, data, test, cache)
    assert files == [str(touched)]  # read to rehash it; its bytes are the same, so no encoding
    assert cache.manifests.files_hashed == len(test) + 1
    assert cache.images_encoded == len(test) and again.key == first.key
    assert torch.equal(again.features, first.features)


def test_the_manifest_is_reused_and_a_rerun_reads_no_image(backbone: Backbone, tmp_path: Path) -> None:
    data = _dtd(tmp_path / "data")
    test = data.splits().test
    _encode(backbone, data, test, FeatureCache(tmp_path / "cache"))
    (manifest,) = (tmp_path / "cache" / "manifests" / "dtd").glob("*.json")
    stored, stamp = manifest.read_bytes(), manifest.stat().st_mtime_ns
    files = json.loads(stored)["files"]
    assert sorted(files) == sorted(it.path for it in test.items)
    for item in test.items:
        file = data.image_file(item)
        assert files[item.path] == [file.stat().st_size, file.stat().st_mtime_ns, content_hash(file)]

    rerun = FeatureCache(tmp_path / "cache")  # a new process: the manifest is read from disk
    with opened(data.path) as opened_files:
        key = feature_key(backbone, data, test.items, split_hash=test.hash, cache=rerun)
        _encode(backbone, data, test, rerun)
    assert opened_files == [] and rerun.manifests.files_hashed == 0 and rerun.images_encoded == 0
    assert rerun.path(key).exists()
    assert manifest.read_bytes() == stored and manifest.stat().st_mtime_ns == stamp


def test_views_name_the_images_too(backbone: Backbone, tmp_path: Path) -> None:
    a, b = _dtd(tmp_path / "a"), _dtd(tmp_path / "b")
    _recolour(b.path, (20, 200, 40))
    cache = FeatureCache(tmp_path / "cache")
    support = a.splits().train.items[:4]
    views_a = encode_views(backbone, a, support, 2, cache=cache, seed=1)
    views_b = encode_views(backbone, b, support, 2, cache=cache, seed=1)
    assert cache.images_encoded == 2 * 2 * len(support) and views_a.key != views_b.key
    assert cache.manifests.files_hashed == 2 * len(support)  # once per root, not once per view


@pytest.mark.parametrize("damage", ["missing", "missing-after-manifest", "unreadable"])
def test_a_missing_or_unreadable_image_is_one_error_naming_it(
    backbone: Backbone, tmp_path: Path, damage: str
) -> None:
    data = _dtd(tmp_path / "data")
    cache = FeatureCache(tmp_path / "cache")
    test = data.splits().test
    if damage == "missing-after-manifest":
        _encode(backbone, data, test, cache)
    file = data.image_file(test.items[3])
    file.unlink()
    if damage == "unreadable":  # a folder where the image was: stat works, reading fails
        file.mkdir()
    encoded = cache.images_encoded
    with pytest.raises(
        DatasetError, match="unreadable image" if damage == "unreadable" else "missing image"
    ) as err:
        _encode(backbone, data, test, cache)
    assert str(file) in str(err.value) and "dtd" in str(err.value)
    assert cache.images_encoded == encoded  # raised before anything was encoded


def test_generated_datasets_are_named_by_their_version(backbone: Backbone, tmp_path: Path) -> None:
    toy = get_dataset("toy-colors")
    cache = FeatureCache(tmp_path / "cache")
    items = toy.splits().test.items[:5]
    assert toy.image_file(items[0]) is None
    key = feature_key(backbone, toy, items, cache=cache)
    assert key.images == GENERATED and key.dataset_version == toy.spec().version
    assert not (tmp_path / "cache" / "manifests").exists() and cache.manifests.files_hashed == 0


def test_zeroshot_on_two_trees_with_one_cache_scores_each_tree(tmp_path: Path) -> None:
    """The bug: the second tree was scored with the first tree's features."""
    roots = {"built": tmp_path / "built", "red": tmp_path / "red"}
    for root in roots.values():
        trees.oxford_pets(root)
    _recolour(roots["red"] / "oxford_pets" / "images", (220, 30, 30))
    spec = RunSpec("zeroshot", "oxford-pets", shots=1, seed=1)
    fresh = {
        name: runner.run(spec, data_root=root, cache=FeatureCache(tmp_path / f"fresh-{name}"))
        for name, root in roots.items()
    }
    assert fresh["built"].metrics != fresh["red"].metrics  # the trees really score differently
    shared = FeatureCache(tmp_path / "shared")
    for name, encodes in (("built", True), ("red", True), ("built", False)):
        result = runner.run(spec, data_root=roots[name], cache=shared)
        assert result.metrics == fresh[name].metrics
        # Each tree encodes its own images once; the rerun of the first reuses its entries.
        assert result.costs["images_encoded"] == (fresh[name].costs["images_encoded"] if encodes else 0)
