"""Few-shot sampling (the Dassl rule), protocols' label spaces, stored subsets."""

from __future__ import annotations

import json
import math
import random
from collections import defaultdict
from pathlib import Path

import pytest

from fewshot import protocols
from fewshot.protocols import (
    base_novel_labels,
    load_subset,
    make_task,
    sample_fewshot,
    sample_subset,
    subset_path,
    task_for,
)
from fewshot.types import ConfigError, DatasetSpec, FewshotError, Item, Split, Splits


def _split(name: str, counts: dict[int, int], rng: random.Random) -> Split:
    """Items of the given per-label counts, interleaved in a shuffled (non-sorted) order."""
    items = [Item(f"{name}/c{label}/{i}.jpg", label) for label, n in counts.items() for i in range(n)]
    rng.shuffle(items)
    return Split(name, tuple(items))


@pytest.fixture
def splits() -> Splits:
    rng = random.Random(123)
    # Small classes sit between large ones: label 1 has 3 train items and label 3 has 2, fewer
    # than K from K = 4 (1) and K = 4 (3) on; Dassl HEAD keeps them whole and draws nothing
    # for them, so every later class and the whole val sample depend on that rule.
    train_counts = {0: 20, 1: 3, 2: 18, 3: 2, 4: 30}
    val_counts = {0: 6, 1: 2, 2: 7, 3: 1, 4: 9}
    return Splits(
        train=_split("train", train_counts, rng),
        val=_split("val", val_counts, rng),
        test=_split("test", {c: 3 for c in range(5)}, rng),
    )


SPEC = DatasetSpec("toyset", ("a", "b", "c", "d", "e"), "a photo of a {}.")


def _dassl_fewshot(items: tuple[Item, ...], num_shots: int, repeat: bool = False) -> list[Item]:
    """Dassl's generate_fewshot_dataset, re-stated from KaiyangZhou/Dassl.pytorch
    dassl/data/datasets/base_dataset.py at HEAD c61a1b5: default repeat=False (since e3a15da,
    2021-10-09), so a class smaller than K is kept whole and draws nothing."""
    tracker: defaultdict[int, list[Item]] = defaultdict(list)
    for item in items:
        tracker[item.label].append(item)
    dataset: list[Item] = []
    for group in tracker.values():
        if len(group) >= num_shots:
            dataset.extend(random.sample(group, num_shots))
        elif repeat:
            dataset.extend(random.choices(group, k=num_shots))
        else:
            dataset.extend(group)
    return dataset


@pytest.mark.parametrize("shots", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sampling_reproduces_dassl(splits: Splits, shots: int, seed: int) -> None:
    state = random.getstate()
    try:
        random.seed(seed)  # Dassl set_random_seed, then train, then val from the global RNG
        want_train = _dassl_fewshot(splits.train.items, shots)
        want_val = _dassl_fewshot(splits.val.items, min(shots, 4))
    finally:
        random.setstate(state)
    task = make_task(SPEC, splits, "fewshot", shots, seed)
    assert [splits.train.items[i] for i in task.train_ids] == want_train
    assert [splits.val.items[i] for i in task.val_ids] == want_val
    # Class 3 has 2 train items: min(K, 2) of them, never repeated; no item is picked twice.
    small = [i for i in task.train_ids if splits.train.items[i].label == 3]
    assert len(small) == min(shots, 2)
    assert len(set(task.train_ids)) == len(task.train_ids)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_old_repeat_rule_gives_other_subsets(splits: Splits, seed: int) -> None:
    """With repeat=True (Dassl for three weeks in 2021) the small classes consume draws, so
    later classes and the val sample change: the rule matters beyond the small classes."""
    state = random.getstate()
    try:
        random.seed(seed)
        old_train = _dassl_fewshot(splits.train.items, 16, repeat=True)
        old_val = _dassl_fewshot(splits.val.items, 4, repeat=True)
    finally:
        random.setstate(state)
    task = make_task(SPEC, splits, "fewshot", 16, seed)
    new_train = [splits.train.items[i] for i in task.train_ids]
    new_val = [splits.val.items[i] for i in task.val_ids]
    order = list(dict.fromkeys(item.label for item in splits.train.items))  # first appearance
    first_small = min(order.index(1), order.index(3))
    after = set(order[first_small + 1 :]) - {1, 3}
    assert after  # some large class is sampled after a small one
    assert [i for i in new_train if i.label in after] != [i for i in old_train if i.label in after]
    assert new_val != old_val


@pytest.mark.parametrize("shots", [1, 4, 16])
def test_val_comes_from_train_outside_the_support_when_there_is_no_val_split(shots: int) -> None:
    """ImageNet's case: Splits.val is the train split; the val sample never touches the
    support images or the test split, and follows the Dassl rule on the remaining images."""
    rng = random.Random(5)
    train = _split("train", {0: 30, 1: 18, 2: 25}, rng)
    test = _split("test", {c: 4 for c in range(3)}, rng)
    splits = Splits(train=train, val=train, test=test)
    assert splits.val_is_train
    spec = DatasetSpec("toyset", ("a", "b", "c"), "{}")
    task = make_task(spec, splits, "fewshot", shots, 2)
    assert not set(task.val_ids) & set(task.train_ids)
    state = random.getstate()
    try:
        random.seed(2)
        support = _dassl_fewshot(train.items, shots)
        rest = tuple(item for item in train.items if item not in support)
        want_val = _dassl_fewshot(rest, min(shots, 4))
    finally:
        random.setstate(state)
    assert [train.items[i] for i in task.train_ids] == support
    assert [train.items[i] for i in task.val_ids] == want_val


def test_sample_fewshot_groups_by_first_appearance() -> None:
    items = tuple(Item(f"{i}.jpg", label) for i, label in enumerate([2, 0, 2, 1, 0, 1, 2]))
    picked = sample_fewshot(Split("t", items), 1, seed=7)
    assert [items[i].label for i in picked] == [2, 0, 1]
    assert sample_fewshot(Split("t", items), 1, seed=7) == picked  # deterministic
    # Fewer items than K: every item of the label, in split order, and no draw.
    assert sample_fewshot(Split("t", items), 5, seed=7) == [0, 2, 6, 1, 4, 3, 5]


def test_seeds_differ(splits: Splits) -> None:
    assert (
        make_task(SPEC, splits, "fewshot", 4, 1).train_ids
        != make_task(SPEC, splits, "fewshot", 4, 2).train_ids
    )


def test_bad_shots_and_protocol(splits: Splits) -> None:
    with pytest.raises(ConfigError, match="shots"):
        make_task(SPEC, splits, "fewshot", -1, 1)
    empty = make_task(SPEC, splits, "fewshot", 0, 1)  # zero-shot: no support, no val
    assert empty.train_ids == () and empty.val_ids == ()
    with pytest.raises(ConfigError, match="protocol"):
        make_task(SPEC, splits, "zero-shot-magic", 4, 1)


def test_fewshot_label_space(splits: Splits) -> None:
    task = make_task(SPEC, splits, "fewshot", 4, 1)
    assert task.train_space.name == "all"
    assert task.train_space.labels == (0, 1, 2, 3, 4)
    assert [s.name for s in task.eval_spaces] == ["all"]
    for protocol in ("cross-dataset", "domain-generalization"):
        other = make_task(SPEC, splits, protocol, 4, 1)
        assert other.train_ids == task.train_ids and [s.name for s in other.eval_spaces] == ["all"]


def test_base_novel_split_rule() -> None:
    assert base_novel_labels([4, 0, 3, 1, 2]) == ((0, 1, 2), (3, 4))  # ceil(5/2) = 3
    assert base_novel_labels(list(range(10))) == ((0, 1, 2, 3, 4), (5, 6, 7, 8, 9))


def test_base2novel_samples_all_classes_then_keeps_base(splits: Splits) -> None:
    full = make_task(SPEC, splits, "fewshot", 16, 2)
    b2n = make_task(SPEC, splits, "base2novel", 16, 2)
    base = set(range(math.ceil(5 / 2)))
    # Same draws as sampling over all classes, filtered (not a fresh sample over base classes).
    assert b2n.train_ids == tuple(i for i in full.train_ids if splits.train.items[i].label in base)
    assert b2n.val_ids == tuple(i for i in full.val_ids if splits.val.items[i].label in base)
    assert b2n.train_space.name == "base" and b2n.train_space.labels == (0, 1, 2)
    assert [(s.name, s.labels) for s in b2n.eval_spaces] == [("base", (0, 1, 2)), ("novel", (3, 4))]
    assert b2n.train_space.relabel() == {0: 0, 1: 1, 2: 2}
    assert b2n.eval_spaces[1].relabel() == {3: 0, 4: 1}


def test_labels_outside_class_names_are_an_error(splits: Splits) -> None:
    small = DatasetSpec("toyset", ("a", "b"), "{}")
    with pytest.raises(FewshotError, match="outside"):
        make_task(small, splits, "fewshot", 4, 1)


def test_task_for_stores_and_reloads(splits: Splits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    task = task_for(SPEC, splits, "base2novel", 4, 3, tmp_path)
    path = subset_path(tmp_path, "toyset", splits.hash, 4, 3)
    assert path == tmp_path / "subsets" / "toyset" / splits.hash / "shot_4-seed_3.json"
    data = json.loads(path.read_text())
    assert data["hash"] == load_subset(path).hash
    assert len(data["train_items"]) == len(data["train_ids"])
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    # A second call loads the stored subset instead of sampling; other protocols share it.
    expected_fewshot = make_task(SPEC, splits, "fewshot", 4, 3)

    def no_sampling(*args: object) -> None:
        raise AssertionError("sampled again")

    monkeypatch.setattr(protocols, "sample_subset", no_sampling)
    assert task_for(SPEC, splits, "base2novel", 4, 3, tmp_path) == task
    assert task_for(SPEC, splits, "fewshot", 4, 3, tmp_path) == expected_fewshot


def test_task_for_replaces_a_tampered_subset(splits: Splits, tmp_path: Path) -> None:
    task = task_for(SPEC, splits, "fewshot", 2, 1, tmp_path)
    path = subset_path(tmp_path, "toyset", splits.hash, 2, 1)
    data = json.loads(path.read_text())
    data["train_ids"][0] = data["train_ids"][1]  # edited by hand: the hash no longer matches
    path.write_text(json.dumps(data))
    with pytest.raises(FewshotError, match="hash"):
        load_subset(path)
    with pytest.warns(UserWarning, match="Resampling"):
        again = task_for(SPEC, splits, "fewshot", 2, 1, tmp_path)
    assert again == task
    assert load_subset(path).train_ids == task.train_ids

    path.write_text("{not json")
    with pytest.warns(UserWarning, match="Unreadable"):
        assert task_for(SPEC, splits, "fewshot", 2, 1, tmp_path) == task


def test_subset_hash_covers_ids(splits: Splits) -> None:
    a = sample_subset("toyset", splits, 4, 1)
    b = sample_subset("toyset", splits, 4, 2)
    assert a.hash != b.hash
    assert a.hash == sample_subset("toyset", splits, 4, 1).hash


def test_a_subset_of_the_old_sampling_rule_is_resampled_saying_why(splits: Splits, tmp_path: Path) -> None:
    task = task_for(SPEC, splits, "fewshot", 2, 1, tmp_path)
    path = subset_path(tmp_path, "toyset", splits.hash, 2, 1)
    data = json.loads(path.read_text())
    data["format"] = 2  # written before small classes were kept whole
    data["train_ids"] = data["train_ids"][::-1]
    path.write_text(json.dumps(data))
    with pytest.raises(FewshotError, match="older sampling rule"):
        load_subset(path)
    with pytest.warns(
        UserWarning, match=r"older sampling rule \(format 2; now 3.*Resampling: the file is replaced"
    ):
        again = task_for(SPEC, splits, "fewshot", 2, 1, tmp_path)
    assert again == task and json.loads(path.read_text())["format"] == 3
