"""The standard datasets' readers, on tiny fake trees in each dataset's real on-disk layout.

Every tree is built by ``tests/_fake_trees.py`` (real folder names, real metadata formats,
8x8 JPEGs) and read through the registered reader, the same code a user's data goes through.
"""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from fewshot.datasets import DATASETS, SUITES, get_dataset, list_datasets
from fewshot.datasets.base import DatasetError
from fewshot.protocols import label_spaces, sample_subset
from tests import _fake_trees as fake

ALL = list(fake.BUILDERS)
SHIFTS = ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")


def test_registry_has_the_17_datasets_and_the_suites() -> None:
    assert len(ALL) == 17
    assert set(ALL) <= set(list_datasets())
    assert SUITES["coop11"] == (
        "imagenet",
        "caltech101",
        "oxford-pets",
        "stanford-cars",
        "flowers102",
        "food101",
        "fgvc-aircraft",
        "sun397",
        "dtd",
        "eurosat",
        "ucf101",
    )
    assert SUITES["proapo13"] == (*SUITES["coop11"], "cub", "places365")
    assert SUITES["imagenet-shift"] == SHIFTS
    assert SUITES["toy"] and SUITES["toy-shift"]
    for name in ALL:
        cls = DATASETS.get(name)
        assert cls.download in ("auto", "manual"), name
        assert cls.domain_of == ("imagenet" if name in SHIFTS else None), name
    assert {n for n in ALL if DATASETS.get(n).download == "manual"} >= {"imagenet", "stanford-cars"}


@pytest.mark.parametrize("name", ALL)
def test_reader_reads_its_real_layout(name: str, tmp_path: Path) -> None:
    tree = fake.BUILDERS[name](tmp_path)
    dataset = get_dataset(name, tmp_path)
    assert dataset.is_present()
    spec, splits = dataset.spec(), dataset.splits()

    assert spec.name == name
    assert spec.classnames == tree.classnames
    assert (len(splits.train), len(splits.val), len(splits.test)) == tree.counts
    assert spec.split_source == tree.split_source
    assert spec.prompt(spec.classnames[0]) == tree.prompt
    assert spec.templates == ()  # OpenAI's 80 templates
    if tree.rows is not None:
        for split_name in fake.SPLITS:
            split = getattr(splits, split_name)
            got = [(it.path, it.label, spec.classnames[it.label]) for it in split.items]
            assert got == tree.rows[split_name], split_name
    base, novel = label_spaces(spec, splits, "base2novel")[1]
    assert (len(base.labels), len(novel.labels)) == tree.base_novel

    image = dataset.load_image(splits.test.items[-1])
    assert image.mode == "RGB" and image.size == (8, 8)
    assert dataset.check() == []
    assert dataset.check(deep=True) == []


def test_reader_is_absent_without_data(tmp_path: Path) -> None:
    for name in ALL:
        dataset = get_dataset(name, tmp_path)
        assert not dataset.is_present(), name
        with pytest.raises(DatasetError, match="not found") as err:
            dataset.splits()
        assert str(tmp_path) in str(err.value) and dataset.fix_hint() in str(err.value)
        assert dataset.check() == [str(err.value)]
    assert "fewshot data download dtd" in get_dataset("dtd", tmp_path).fix_hint()
    assert get_dataset("imagenet", tmp_path).fix_hint().startswith("manual: ")
    assert get_dataset("stanford-cars", tmp_path).fix_hint().startswith("manual: ")


def test_toy_datasets_check_clean() -> None:
    assert get_dataset("toy-shapes").check() == []
    assert get_dataset("toy-shapes-sketch").check(deep=True) == []


# ------------------------------------------------------------------------------------------
# ImageNet and its shifts


def test_imagenet_a_and_r_are_subsets_of_imagenets_classifier(tmp_path: Path) -> None:
    fake.imagenet(tmp_path)
    fake.imagenet_a(tmp_path)
    fake.imagenet_r(tmp_path)  # has no classnames.txt of its own: reads ImageNet's
    imagenet = get_dataset("imagenet", tmp_path).spec()
    for name, labels in (("imagenet-a", (1, 3, 4)), ("imagenet-r", (0, 5))):
        dataset = get_dataset(name, tmp_path)
        assert dataset.imagenet_labels == labels
        assert dataset.spec().classnames == tuple(imagenet.classnames[i] for i in labels)
        assert sorted(set(dataset.splits().test.labels)) == list(range(len(labels)))


def test_imagenet_val_not_sorted_into_class_folders_is_an_error(tmp_path: Path) -> None:
    fake.imagenet(tmp_path)
    val = tmp_path / "imagenet" / "images" / "val"
    shutil.rmtree(val)
    for i in range(3):
        fake.write_image(val / f"ILSVRC2012_val_{i + 1:08d}.JPEG")
    dataset = get_dataset("imagenet", tmp_path)
    with pytest.raises(DatasetError, match="not sorted into class folders") as err:
        dataset.splits()
    assert str(val) in str(err.value) and "<wnid>" in str(err.value)
    assert dataset.check() == [str(err.value)]


def test_imagenet_val_partly_sorted_is_an_error(tmp_path: Path) -> None:
    fake.imagenet(tmp_path)
    val = tmp_path / "imagenet" / "images" / "val"
    fake.write_image(val / "ILSVRC2012_val_00049999.JPEG")
    with pytest.raises(DatasetError, match=r"lie directly in .*val"):
        get_dataset("imagenet", tmp_path).splits()


def test_imagenet_needs_sorted_complete_classnames(tmp_path: Path) -> None:
    fake.imagenet(tmp_path)
    classnames = tmp_path / "imagenet" / "classnames.txt"
    lines = classnames.read_text().splitlines()
    classnames.write_text("\n".join(lines[::-1]) + "\n")
    with pytest.raises(DatasetError, match="sorted order"):
        get_dataset("imagenet", tmp_path).spec()
    classnames.write_text("\n".join(lines[:-1]) + "\n")  # one class folder is now unknown
    with pytest.raises(DatasetError, match=r"do not match classnames\.txt"):
        get_dataset("imagenet", tmp_path).splits()


def test_shift_without_any_classnames_file(tmp_path: Path) -> None:
    fake.imagenet_sketch(tmp_path)
    (tmp_path / "imagenet-sketch" / "classnames.txt").unlink()
    with pytest.raises(DatasetError, match=r"classnames\.txt") as err:
        get_dataset("imagenet-sketch", tmp_path).splits()
    assert str(tmp_path / "imagenet" / "classnames.txt") in str(err.value)


# ------------------------------------------------------------------------------------------
# CoOp split files: exact order, and the Dassl few-shot rule


def _dassl_fewshot(rows: list[fake.Row], num_shots: int) -> list[fake.Row]:
    """Dassl's generate_fewshot_dataset with its default repeat=False (KaiyangZhou/Dassl.pytorch
    at HEAD c61a1b5), re-stated from its rule: group by label in order of first appearance,
    random.sample K per label; a label with fewer items keeps them all and draws nothing."""
    tracker: defaultdict[int, list[fake.Row]] = defaultdict(list)
    for row in rows:
        tracker[row[1]].append(row)
    out: list[fake.Row] = []
    for group in tracker.values():
        if len(group) >= num_shots:
            out.extend(random.sample(group, num_shots))
        else:
            out.extend(group)
    return out


def _unsorted_dtd(tmp_path: Path) -> dict[str, list[fake.Row]]:
    """A DTD tree whose CoOp split file lists classes of uneven sizes in a shuffled order."""
    counts = {"train": [20, 25, 3, 18], "val": [6, 5, 1, 7], "test": [2, 2, 2, 2]}
    classes = ["banded", "blotchy", "cracked", "zigzagged"]
    rows: dict[str, list[fake.Row]] = {}
    rng = random.Random(7)
    for split, sizes in counts.items():
        rows[split] = [
            (f"{c}/{c}_{split}_{i:03d}.jpg", label, c)
            for label, c in enumerate(classes)
            for i in range(sizes[label])
        ]
        rng.shuffle(rows[split])
        for impath, label, _ in rows[split]:
            fake.write_image(tmp_path / "dtd" / "images" / impath, label)
    fake.write_split(tmp_path / "dtd" / "split_zhou_DescribableTextures.json", rows)
    return rows


def test_coop_split_file_order_and_dassl_fewshot_subset(tmp_path: Path) -> None:
    rows = _unsorted_dtd(tmp_path)
    dataset = get_dataset("dtd", tmp_path)
    spec, splits = dataset.spec(), dataset.splits()
    for name in fake.SPLITS:
        got = [(it.path, it.label, spec.classnames[it.label]) for it in getattr(splits, name).items]
        assert got == [(f"images/{p}", label, c) for p, label, c in rows[name]]

    state = random.getstate()
    try:
        for seed in (1, 2, 3):
            for shots in (1, 2, 4, 8, 16):
                subset = sample_subset("dtd", splits, shots, seed)
                random.seed(seed)  # Dassl's set_random_seed, then train, then val
                train = _dassl_fewshot(rows["train"], shots)
                val = _dassl_fewshot(rows["val"], min(shots, 4))
                picked_train = [
                    (splits.train.items[i].path, splits.train.items[i].label) for i in subset.train_ids
                ]
                picked_val = [(splits.val.items[i].path, splits.val.items[i].label) for i in subset.val_ids]
                assert picked_train == [(f"images/{p}", label) for p, label, _ in train]
                assert picked_val == [(f"images/{p}", label) for p, label, _ in val]
    finally:
        random.setstate(state)


# ------------------------------------------------------------------------------------------
# Generated splits


def test_generated_split_is_deterministic_saved_and_labelled(tmp_path: Path) -> None:
    fake.dtd(tmp_path / "a", split=False)
    fake.dtd(tmp_path / "b", split=False)
    first, second = get_dataset("dtd", tmp_path / "a"), get_dataset("dtd", tmp_path / "b")
    assert first.splits().hash == second.splits().hash
    saved_a = tmp_path / "a" / "dtd" / "split_generated_DescribableTextures.json"
    saved_b = tmp_path / "b" / "dtd" / "split_generated_DescribableTextures.json"
    assert saved_a.read_bytes() == saved_b.read_bytes()
    assert first.spec().split_source == "generated"

    data = json.loads(saved_a.read_text())  # CoOp's format
    assert set(data) == set(fake.SPLITS)
    assert all(
        isinstance(p, str) and isinstance(label, int) and isinstance(c, str) for p, label, c in data["train"]
    )
    splits = first.splits()
    for split, per_class in zip((splits.train, splits.val, splits.test), (5, 2, 3), strict=True):
        assert Counter(split.labels) == {0: per_class, 1: per_class, 2: per_class}
    paths = [it.path for s in (splits.train, splits.val, splits.test) for it in s.items]
    on_disk = sorted(
        p.relative_to(tmp_path / "a" / "dtd").as_posix() for p in (tmp_path / "a" / "dtd").rglob("*.jpg")
    )
    assert sorted(paths) == on_disk  # every image once, nothing else

    again = get_dataset("dtd", tmp_path / "a")  # a fresh reader reads the saved file
    assert again.splits().hash == splits.hash and again.spec().split_source == "generated"

    coop = {name: [tuple(row) for row in data[name]] for name in fake.SPLITS}
    coop["train"], coop["val"] = coop["val"], coop["train"]  # a different split: CoOp's file wins
    fake.write_split(tmp_path / "a" / "dtd" / "split_zhou_DescribableTextures.json", coop)
    coop_reader = get_dataset("dtd", tmp_path / "a")
    assert coop_reader.spec().split_source == "split_zhou_DescribableTextures.json"
    assert len(coop_reader.splits().train) == 6


FOLDER_RULE = {"caltech101", "dtd", "food101", "eurosat", "flowers102"}  # 10 images a class: 5/2/3


@pytest.mark.parametrize("name", list(fake.SPLIT_FILE_BUILDERS))
def test_split_generated_from_the_official_files(name: str, tmp_path: Path) -> None:
    tree = fake.SPLIT_FILE_BUILDERS[name](tmp_path, split=False)
    dataset = get_dataset(name, tmp_path)
    spec, splits = dataset.spec(), dataset.splits()
    assert spec.split_source == "generated"
    assert (dataset.path / dataset.generated_file).is_file()
    assert spec.classnames == tree.classnames
    per_class = (5, 2, 3) if name in FOLDER_RULE else (4, 1, 2)  # lists: 5 train (1 to val), 2 test
    n = len(tree.classnames)
    for split, count in zip((splits.train, splits.val, splits.test), per_class, strict=True):
        assert Counter(split.labels) == dict.fromkeys(range(n), count), split.name
    paths = [it.path for s in (splits.train, splits.val, splits.test) for it in s.items]
    assert len(set(paths)) == len(paths)
    assert not any("BACKGROUND_Google" in p or "Faces_easy" in p for p in paths)
    assert dataset.check() == []


@pytest.mark.parametrize(
    ("name", "mat"), [("flowers102", "imagelabels.mat"), ("stanford-cars", "devkit/cars_meta.mat")]
)
def test_an_unreadable_mat_file_names_the_file(name: str, mat: str, tmp_path: Path) -> None:
    fake.SPLIT_FILE_BUILDERS[name](tmp_path, split=False)
    dataset = get_dataset(name, tmp_path)
    (dataset.path / mat).write_bytes(b"not a MATLAB file")
    with pytest.raises(DatasetError, match=re.escape(str(dataset.path / mat))):
        dataset.splits()


def test_cub_uses_the_official_test_set(tmp_path: Path) -> None:
    fake.cub(tmp_path)
    splits = get_dataset("cub", tmp_path).splits()
    base = tmp_path / "cub" / "CUB_200_2011"
    images = dict(line.split(" ", 1) for line in (base / "images.txt").read_text().splitlines())
    flags = dict(line.split(" ") for line in (base / "train_test_split.txt").read_text().splitlines())
    official_test = [f"CUB_200_2011/images/{images[i]}" for i in images if flags[i] == "0"]
    official_train = {f"CUB_200_2011/images/{images[i]}" for i in images if flags[i] == "1"}
    assert [it.path for it in splits.test.items] == official_test
    assert {it.path for it in splits.train.items + splits.val.items} == official_train
    assert Counter(splits.val.labels) == {0: 1, 1: 1, 2: 1}


def test_places365_uses_the_official_val_set_as_test(tmp_path: Path) -> None:
    fake.places365(tmp_path)
    splits = get_dataset("places365", tmp_path).splits()
    val_lines = (tmp_path / "places365" / "places365_val.txt").read_text().splitlines()
    assert [(it.path, it.label) for it in splits.test.items] == [
        (f"val_large/{line.split()[0]}", int(line.split()[1])) for line in val_lines
    ]
    train_lines = (tmp_path / "places365" / "places365_train_standard.txt").read_text().splitlines()
    assert {it.path for it in splits.train.items + splits.val.items} == {
        f"data_large{line.split()[0]}" for line in train_lines
    }


# ------------------------------------------------------------------------------------------
# Broken split files


def _split_file(tmp_path: Path) -> Path:
    fake.dtd(tmp_path)
    return tmp_path / "dtd" / "split_zhou_DescribableTextures.json"


def test_malformed_split_file(tmp_path: Path) -> None:
    file = _split_file(tmp_path)
    file.write_text('{"train": [')
    with pytest.raises(DatasetError, match="not valid JSON") as err:
        get_dataset("dtd", tmp_path).splits()
    assert str(file) in str(err.value)


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"train": [], "val": []}, "does not have CoOp's shape"),
        ([["banded/banded_0001.jpg", 0, "banded"]], "does not have CoOp's shape"),
        ({"train": [["banded/banded_0001.jpg", 0]], "val": [], "test": []}, r"train entry 0 .* not \[impath"),
        ({"train": [["banded/banded_0001.jpg", "0", "banded"]], "val": [], "test": []}, "train entry 0"),
    ],
)
def test_split_file_of_the_wrong_shape(tmp_path: Path, content: object, message: str) -> None:
    file = _split_file(tmp_path)
    file.write_text(json.dumps(content))
    with pytest.raises(DatasetError, match=message) as err:
        get_dataset("dtd", tmp_path).splits()
    assert str(file) in str(err.value)


def _rewrite(file: Path, split: str, rows: list[list[object]]) -> None:
    data = json.loads(file.read_text())
    data[split] = rows
    file.write_text(json.dumps(data))


def test_empty_split_is_an_error(tmp_path: Path) -> None:
    file = _split_file(tmp_path)
    _rewrite(file, "test", [])
    with pytest.raises(DatasetError, match=r"the test split of .* is empty") as err:
        get_dataset("dtd", tmp_path).splits()
    assert str(file) in str(err.value)


def test_label_with_two_names_is_an_error(tmp_path: Path) -> None:
    file = _split_file(tmp_path)
    data = json.loads(file.read_text())
    data["val"][0][2] = "striped"
    file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match="two class names"):
        get_dataset("dtd", tmp_path).splits()


@pytest.mark.parametrize(("impath", "why"), [("../../outside.jpg", "'..'"), ("/etc/hostname", "absolute")])
def test_split_entry_leaving_the_root_is_an_error(tmp_path: Path, impath: str, why: str) -> None:
    file = _split_file(tmp_path)
    data = json.loads(file.read_text())
    data["train"].append([impath, 0, "banded"])
    file.write_text(json.dumps(data))
    with pytest.raises(DatasetError, match=why) as err:
        get_dataset("dtd", tmp_path).splits()
    assert str(file) in str(err.value)


# ------------------------------------------------------------------------------------------
# Images: symlinks, missing and corrupt files, check()


def test_symlink_leaving_the_dataset_folder(tmp_path: Path) -> None:
    file = _split_file(tmp_path / "data")
    outside = tmp_path / "elsewhere" / "secret.jpg"
    fake.write_image(outside)
    link = tmp_path / "data" / "dtd" / "images" / "banded" / "escape.jpg"
    link.symlink_to(outside)
    data = json.loads(file.read_text())
    data["test"].append(["banded/escape.jpg", 0, "banded"])
    file.write_text(json.dumps(data))
    dataset = get_dataset("dtd", tmp_path / "data")
    escaped = [it for it in dataset.splits().test.items if it.path.endswith("escape.jpg")]
    with pytest.raises(DatasetError, match="outside the dataset folder") as err:
        dataset.load_image(escaped[0])
    assert str(link) in str(err.value)
    problems = dataset.check()
    assert len(problems) == 1 and str(link) in problems[0] and "outside" in problems[0]


def test_symlinked_dataset_and_image_folders_are_fine(tmp_path: Path) -> None:
    fake.dtd(tmp_path / "store")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dtd").symlink_to(tmp_path / "store" / "dtd", target_is_directory=True)
    fake.imagenet(tmp_path / "store")
    linked = tmp_path / "data" / "imagenet" / "images"
    linked.mkdir(parents=True)
    shutil.copy(tmp_path / "store" / "imagenet" / "classnames.txt", tmp_path / "data" / "imagenet")
    for part in ("train", "val"):  # CoOp's advice: link images/train and images/val
        (linked / part).symlink_to(
            tmp_path / "store" / "imagenet" / "images" / part, target_is_directory=True
        )
    for name in ("dtd", "imagenet"):
        dataset = get_dataset(name, tmp_path / "data")
        assert dataset.check(deep=True) == [], name
        assert dataset.load_image(dataset.splits().train.items[0]).mode == "RGB"


def test_check_reports_a_deleted_and_a_corrupt_image(tmp_path: Path) -> None:
    fake.oxford_pets(tmp_path)
    dataset = get_dataset("oxford-pets", tmp_path)
    splits = dataset.splits()
    deleted, corrupt = splits.test.items[0], splits.train.items[0]
    deleted_file = tmp_path / "oxford_pets" / deleted.path
    corrupt_file = tmp_path / "oxford_pets" / corrupt.path
    deleted_file.unlink()
    corrupt_file.write_bytes(fake.jpeg_bytes(1)[:40])  # a truncated JPEG

    shallow = dataset.check()
    assert len(shallow) == 1
    assert str(deleted_file) in shallow[0] and "missing image" in shallow[0]
    assert "fewshot data download oxford-pets" in shallow[0]
    deep = dataset.check(deep=True)  # splits in order train, val, test
    assert len(deep) == 2
    assert str(corrupt_file) in deep[0] and "unreadable image" in deep[0]
    assert deep[1] == shallow[0]

    with pytest.raises(DatasetError, match="missing image") as err:
        dataset.load_image(deleted)
    assert str(deleted_file) in str(err.value)
    with pytest.raises(DatasetError, match="unreadable image") as err:
        dataset.load_image(corrupt)
    assert str(corrupt_file) in str(err.value)


def test_check_lists_at_most_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from fewshot.datasets import base

    fake.food101(tmp_path)
    monkeypatch.setattr(base, "CHECK_LIMIT", 4)
    shutil.rmtree(tmp_path / "food-101" / "images" / "waffles")  # 10 images gone
    problems = get_dataset("food101", tmp_path).check()
    assert len(problems) == 5
    assert problems[-1] == "food101: ... and 6 more problems like the ones above."
    assert all("missing image" in p and "waffles" in p for p in problems[:4])


def test_reader_pickles_without_its_splits(tmp_path: Path) -> None:
    fake.dtd(tmp_path)
    dataset = get_dataset("dtd", tmp_path)
    item = dataset.splits().train.items[0]
    copy = pickle.loads(pickle.dumps(dataset))  # what a data-loader worker receives
    assert copy._loaded_data is None
    assert copy.load_image(item).tobytes() == dataset.load_image(item).tobytes()


def test_reader_sees_a_changed_split_file(tmp_path: Path) -> None:
    file = _split_file(tmp_path)
    before = get_dataset("dtd", tmp_path).splits()
    data = json.loads(file.read_text())
    data["train"] = data["train"][:-1]
    file.write_text(json.dumps(data))
    os.utime(file, ns=(1, 1))  # a new modification time even on coarse clocks
    after = get_dataset("dtd", tmp_path).splits()
    assert len(after.train) == len(before.train) - 1
