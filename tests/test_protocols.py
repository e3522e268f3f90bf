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
    # Label 3 has only 2 train items (fewer than K): Dassl (repeat=True) draws K with replacement.
    train_counts = {0: 20, 1: 25, 2: 18, 3: 2, 4: 30}
    val_counts = {0: 6, 1: 5, 2: 7, 3: 1, 4: 9}
    return Splits(
        train=_split("train", train_counts, rng),
        val=_split("val", val_counts, rng),
        test=_split("test", {c: 3 for c in range(5)}, rng),
    )


SPEC = DatasetSpec("toyset", ("a", "b", "c", "d", "e"), "a photo of a {}.")


def _dassl_fewshot(items: tuple[Item, ...], num_shots: int) -> list[Item]:
    """Dassl's generate_fewshot_dataset (its default repeat=True), re-stated from its rule."""
    tracker: defaultdict[int, list[Item]] = defaultdict(list)
    for item in items:
        tracker[item.label].append(item)
    dataset: list[Item] = []
    for group in tracker.values():
        if len(group) >= num_shots:
            dataset.extend(random.sample(group, num_shots))
        else:
            dataset.extend(random.choices(group, k=num_shots))
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
    # Class 3 has 2 train items: K picks of those two (repeats once K > 2); others never repeat.
    small = [i for i in task.train_ids if splits.train.items[i].label == 3]
    assert len(small) == shots and len(set(small)) <= 2
    others = [i for i in task.train_ids if splits.train.items[i].label != 3]
    assert len(set(others)) == len(others)


def test_sample_fewshot_groups_by_first_appearance() -> None:
    items = tuple(Item(f"{i}.jpg", label) for i, label in enumerate([2, 0, 2, 1, 0, 1, 2]))
    picked = sample_fewshot(Split("t", items), 1, seed=7)
    assert [items[i].label for i in picked] == [2, 0, 1]
    assert sample_fewshot(Split("t", items), 1, seed=7) == picked  # deterministic
    # Fewer items than K: K draws with replacement per label, in first-appearance order.
    rng = random.Random(7)
    want = [i for group in ([0, 2, 6], [1, 4], [3, 5]) for i in rng.choices(group, k=5)]
    assert sample_fewshot(Split("t", items), 5, seed=7) == want


def test_seeds_differ(splits: Splits) -> None:
    assert (
        make_task(SPEC, splits, "fewshot", 4, 1).train_ids
        != make_task(SPEC, splits, "fewshot", 4, 2).train_ids
    )


def test_bad_shots_and_protocol(splits: Splits) -> None:
    with pytest.raises(ConfigError, match="shots"):
        make_task(SPEC, splits, "fewshot", 0, 1)
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
