"""Evaluation protocols: Dassl few-shot sampling, label spaces, and stored subsets.

Sampling (docs/design.md#few-shot-subsets), so that seed ``s`` picks the same images as the
CoOp code base given the same split:

1. ``rng = random.Random(seed)`` (Dassl seeds Python's global ``random`` with the run seed
   right before sampling, and nothing else draws from it in between).
2. Train: group the train items by label in order of first appearance; per label
   ``rng.sample(indices, K)``; a class with fewer than K items keeps all of them, in split
   order, and draws nothing from ``rng``. This is Dassl's ``generate_fewshot_dataset`` with
   its default ``repeat=False``, which the CoOp readers use: KaiyangZhou/Dassl.pytorch
   dassl/data/datasets/base_dataset.py, default ``False`` since commit e3a15da
   (2021-10-09, "set repeat=False as default"; it was ``True`` from 2021-09-15, when
   ``repeat`` was added) and unchanged at HEAD c61a1b5.
3. Val: the same rule on the val split with ``min(K, 4)`` per class, with the same ``rng``,
   after train. A dataset with no val split of its own (ImageNet: its ``Splits.val`` is its
   train split) draws its few-shot val set from the train images *outside the support
   set*, by the same rule; CoOp uses ImageNet's test set as val instead, which would let
   selection see test images (a deliberate deviation, docs/design.md).

``random.sample`` draws depend only on the population size, so sampling positions gives the
same picks as Dassl sampling its ``Datum`` objects.

Protocols (docs/methods.md#evaluation-protocols): ``fewshot``, ``cross-dataset`` and
``domain-generalization`` train on all classes and evaluate the ``all`` space (target datasets
are added by the runner); ``base2novel`` samples over all classes first, then keeps only
base-class items (base = first ``ceil(n/2)`` of the sorted label ids of the train split,
novel = the rest) and evaluates ``base`` and ``novel``.

Stored subsets: the sample of one (split, K, seed) does not depend on the protocol (every
protocol samples over all classes first), so it is stored once, as CoOp stores
``split_fewshot/shot_K-seed_S.pkl``, but as JSON with its hash:
``<cache root>/subsets/<dataset>/<split hash>/shot_K-seed_S.json``. :func:`task_for` loads it
when present and valid, or samples and stores it (atomic write).
"""

from __future__ import annotations

import json
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from fewshot._io import atomic_write_text
from fewshot.types import (
    PROTOCOLS,
    ConfigError,
    DatasetSpec,
    FewshotError,
    FewShotTask,
    LabelSpace,
    Split,
    Splits,
    safe_name,
    stable_hash,
)

__all__ = [
    "SUBSET_FORMAT",
    "Subset",
    "base_novel_labels",
    "label_spaces",
    "load_subset",
    "make_task",
    "sample_fewshot",
    "sample_subset",
    "save_subset",
    "subset_path",
    "task_for",
    "transfer_plan",
]

SUBSET_FORMAT = 3  # 3: small classes kept whole (Dassl HEAD, repeat=False); val outside the support
_RULE = (
    "dassl: random.Random(seed); per label in order of first appearance random.sample(K), "
    "all items (no draw) if fewer; train K then val min(K, 4); val from train minus support "
    "when the dataset has no val split"
)


@dataclass(frozen=True)
class Subset:
    """The sampled support (train) and val indices of one (splits, K, seed), over all classes."""

    dataset: str
    split_hash: str  # Splits.hash of the splits sampled from
    shots: int
    seed: int
    train_ids: tuple[int, ...]  # indices into splits.train, in Dassl order
    val_ids: tuple[int, ...]  # indices into splits.val, in Dassl order

    @cached_property
    def hash(self) -> str:
        return stable_hash(
            [
                SUBSET_FORMAT,
                self.dataset,
                self.split_hash,
                self.shots,
                self.seed,
                self.train_ids,
                self.val_ids,
            ]
        )


def _check_shots(shots: int) -> None:
    """K >= 1; K = 0 (no support set) serves methods that read no support images."""
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 0:
        raise ConfigError(f"shots must be a positive integer, got {shots!r}. Standard: 1,2,4,8,16.")


def sample_fewshot(
    split: Split,
    shots: int,
    seed: int,
    rng: random.Random | None = None,
    exclude: frozenset[int] = frozenset(),
) -> list[int]:
    """Indices into ``split`` of a K-shot sample by the Dassl rule (module docstring).

    With ``rng`` given, draws come from it and ``seed`` is ignored (so train and val can share
    one generator, as in Dassl); otherwise from ``random.Random(seed)``. Indices in
    ``exclude`` are never picked (they are left out of the split before grouping).
    """
    _check_shots(shots)
    rng = rng if rng is not None else random.Random(seed)
    by_label: dict[int, list[int]] = {}  # dicts keep insertion order = first appearance
    for index, item in enumerate(split.items):
        if index not in exclude:
            by_label.setdefault(item.label, []).append(index)
    picked: list[int] = []
    for indices in by_label.values():
        picked.extend(rng.sample(indices, shots) if len(indices) >= shots else indices)
    return picked


def sample_subset(dataset: str, splits: Splits, shots: int, seed: int) -> Subset:
    """Sample train (K per class) then val (min(K, 4) per class) with one ``Random(seed)``;
    val avoids the support images when the val split is the train split."""
    _check_shots(shots)
    if len(splits.train) == 0:
        raise FewshotError(
            f"The train split of {dataset} is empty; check its split file (`fewshot data check`)."
        )
    rng = random.Random(seed)
    train = sample_fewshot(splits.train, shots, seed, rng)
    # No val split of its own (ImageNet): val comes from the train images outside the support.
    exclude = frozenset(train) if splits.val_is_train else frozenset()
    val = sample_fewshot(splits.val, min(shots, 4), seed, rng, exclude)
    return Subset(dataset, splits.hash, shots, seed, tuple(train), tuple(val))


def base_novel_labels(labels: list[int] | tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Split label ids into base (first ceil(n/2) of the sorted ids) and novel (the rest)."""
    ordered = sorted(set(labels))
    m = math.ceil(len(ordered) / 2)
    return tuple(ordered[:m]), tuple(ordered[m:])


def label_spaces(
    spec: DatasetSpec, splits: Splits, protocol: str
) -> tuple[LabelSpace, tuple[LabelSpace, ...]]:
    """The train label space and the evaluated label spaces of ``protocol`` on ``spec``."""
    if protocol not in PROTOCOLS:
        raise ConfigError(f"Unknown protocol {protocol!r}. Protocols: {', '.join(PROTOCOLS)}.")
    train_labels = set(splits.train.labels)
    bad = sorted(label for label in train_labels if not 0 <= label < spec.num_classes)
    if bad:
        raise FewshotError(
            f"{spec.name}: train labels {bad[:5]} are outside 0..{spec.num_classes - 1} "
            "(the class-name list); the split file and the dataset's class names disagree."
        )
    if protocol == "base2novel":
        # Dassl's subsample_classes takes the labels present in the train data.
        base, novel = base_novel_labels(sorted(train_labels))
        base_space = LabelSpace("base", spec.name, base)
        return base_space, (base_space, LabelSpace("novel", spec.name, novel))
    everything = LabelSpace("all", spec.name, tuple(range(spec.num_classes)))
    return everything, (everything,)


def make_task(
    spec: DatasetSpec, splits: Splits, protocol: str, shots: int, seed: int, subset: Subset | None = None
) -> FewShotTask:
    """The few-shot task of (protocol, K, seed); samples unless a matching ``subset`` is given."""
    train_space, eval_spaces = label_spaces(spec, splits, protocol)
    if subset is None:
        subset = sample_subset(spec.name, splits, shots, seed)
    elif (subset.split_hash, subset.shots, subset.seed) != (splits.hash, shots, seed):
        raise ValueError("make_task: the subset was sampled for other splits, shots or seed.")
    keep = set(train_space.labels)
    # Restricting after sampling over all classes is the base-to-novel order (CoOp's
    # subsample_classes, KaiyangZhou/CoOp datasets/oxford_pets.py).
    train_ids = tuple(i for i in subset.train_ids if splits.train.items[i].label in keep)
    val_ids = tuple(i for i in subset.val_ids if splits.val.items[i].label in keep)
    return FewShotTask(
        dataset=spec.name,
        protocol=protocol,
        shots=shots,
        seed=seed,
        split_hash=splits.hash,
        train_ids=train_ids,
        val_ids=val_ids,
        train_space=train_space,
        eval_spaces=eval_spaces,
    )


# ------------------------------------------------------------------------------------------
# Stored subsets


def subset_path(cache_root: Path, dataset: str, split_hash: str, shots: int, seed: int) -> Path:
    """``<cache_root>/subsets/<dataset>/<split_hash>/shot_K-seed_S.json``."""
    return Path(cache_root) / "subsets" / safe_name(dataset) / split_hash / f"shot_{shots}-seed_{seed}.json"


def save_subset(subset: Subset, path: Path, splits: Splits | None = None) -> None:
    """Write ``subset`` as JSON with its hash, atomically; with ``splits``, list the items too."""
    data: dict[str, Any] = {
        "format": SUBSET_FORMAT,
        "rule": _RULE,
        "dataset": subset.dataset,
        "split_hash": subset.split_hash,
        "shots": subset.shots,
        "seed": subset.seed,
        "train_ids": list(subset.train_ids),
        "val_ids": list(subset.val_ids),
        "hash": subset.hash,
    }
    if splits is not None:  # for people reading the file; loading uses the ids only
        data["train_items"] = [
            [splits.train.items[i].path, splits.train.items[i].label] for i in subset.train_ids
        ]
        data["val_items"] = [[splits.val.items[i].path, splits.val.items[i].label] for i in subset.val_ids]
    atomic_write_text(Path(path), json.dumps(data, indent=1))


def load_subset(path: Path) -> Subset:
    """Read a subset file; raise :class:`FewshotError` if it is unreadable, of an older
    sampling rule, or its hash is wrong."""
    try:
        data = json.loads(Path(path).read_text())
        subset = Subset(
            dataset=str(data["dataset"]),
            split_hash=str(data["split_hash"]),
            shots=int(data["shots"]),
            seed=int(data["seed"]),
            train_ids=tuple(int(i) for i in data["train_ids"]),
            val_ids=tuple(int(i) for i in data["val_ids"]),
        )
        stored_hash = data["hash"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise FewshotError(f"Unreadable few-shot subset file {path}: {exc}.") from exc
    if data.get("format") != SUBSET_FORMAT:
        raise FewshotError(
            f"Few-shot subset file {path} was drawn by an older sampling rule (format "
            f"{data.get('format', 1)!r}; now {SUBSET_FORMAT}: classes smaller than K are kept whole, "
            "and few-shot val images lie outside the support)."
        )
    if stored_hash != subset.hash:
        raise FewshotError(f"Few-shot subset file {path} does not match its hash (edited or damaged).")
    return subset


def task_for(
    spec: DatasetSpec, splits: Splits, protocol: str, shots: int, seed: int, cache_root: Path
) -> FewShotTask:
    """:func:`make_task` with the subset loaded from ``cache_root`` (or sampled and stored there).

    A stored file that is unreadable, fails its hash, or does not fit these splits is reported
    with a warning and replaced by a fresh sample.
    """
    _check_shots(shots)
    path = subset_path(cache_root, spec.name, splits.hash, shots, seed)
    subset: Subset | None = None
    if path.exists():
        try:
            subset = load_subset(path)
            _check_fits(subset, splits, spec.name, shots, seed)
        except FewshotError as exc:
            warnings.warn(f"{exc} Resampling: the file is replaced.", stacklevel=2)
            subset = None
    if subset is None:
        subset = sample_subset(spec.name, splits, shots, seed)
        save_subset(subset, path, splits)
    return make_task(spec, splits, protocol, shots, seed, subset)


def _check_fits(subset: Subset, splits: Splits, dataset: str, shots: int, seed: int) -> None:
    fits = (
        (subset.dataset, subset.split_hash, subset.shots, subset.seed) == (dataset, splits.hash, shots, seed)
        and all(0 <= i < len(splits.train) for i in subset.train_ids)
        and all(0 <= i < len(splits.val) for i in subset.val_ids)
    )
    if not fits:
        raise FewshotError(
            f"Few-shot subset file for {dataset} K={shots} seed={seed} does not fit the splits."
        )


# ------------------------------------------------------------------------------------------
# Cross-dataset transfer and domain generalisation (docs/methods.md#cross-dataset-transfer)

# The source a suite's cross-dataset table trains on (CoOp/CoCoOp/MaPLe: ImageNet).
TRANSFER_SOURCES: dict[str, str] = {"coop11": "imagenet", "proapo13": "imagenet", "toy": "toy-objects"}


def _shifts_of(source: str) -> list[str]:
    """Registered datasets that are shifted domains of ``source`` (``Dataset.domain_of``)."""
    from fewshot.datasets import DATASETS

    return [name for name in DATASETS.names() if DATASETS.get(name).domain_of == source]


def transfer_plan(
    protocol: str, names: Sequence[str], source: str | None = None
) -> tuple[str, tuple[str, ...]]:
    """The (source, targets) of a ``cross-dataset`` or ``domain-generalization`` run.

    ``names`` are the datasets and suites the user gave. Cross-dataset: the source is
    ``source``, else the designated source of a suite given (:data:`TRANSFER_SOURCES`: coop11
    trains on ImageNet, toy on toy-objects), else the first dataset; the targets are the other
    datasets given or, when only the source is given, the other members of its first suite.
    Domain generalisation: the source is ``source``, else the dataset the given shifted
    domains belong to, else the first dataset that has shifted domains; the targets are the
    shifted domains given, or all registered shifted domains of the source.
    """
    from fewshot.datasets import DATASETS, SUITES, resolve_datasets

    datasets = resolve_datasets(list(names))
    if source is not None:
        source = resolve_datasets([source])[0]
    if protocol == "cross-dataset":
        if source is None:
            designated = [TRANSFER_SOURCES[n] for n in names if n in TRANSFER_SOURCES]
            source = designated[0] if designated else datasets[0]
        targets = [d for d in datasets if d != source]
        if not targets:
            suite = next((m for m in SUITES.values() if source in m and len(m) > 1), ())
            targets = [d for d in suite if d != source]
        if not targets:
            raise ConfigError(
                f"Cross-dataset transfer from {source} needs target datasets: add them with "
                "--dataset NAME or --suite NAME (e.g. --suite coop11)."
            )
        return source, tuple(targets)
    if protocol != "domain-generalization":
        raise ConfigError(f"transfer_plan takes cross-dataset or domain-generalization, not {protocol!r}.")
    if source is None:
        domains = list(dict.fromkeys(d for d in datasets if DATASETS.get(d).domain_of))
        owners = list(dict.fromkeys(DATASETS.get(d).domain_of for d in domains))
        if len(owners) > 1:
            raise ConfigError(
                f"The shifted domains given belong to several sources ({', '.join(map(str, owners))}); "
                "pass --source NAME."
            )
        with_shifts = [d for d in datasets if _shifts_of(d)]
        source = owners[0] if owners else with_shifts[0] if with_shifts else None
        if source is None:
            raise ConfigError(
                f"None of {', '.join(datasets)} has shifted domains registered. Domain generalisation "
                "trains on a source (e.g. imagenet, toy-shapes) and evaluates its shifted domains "
                "(imagenet-shift, toy-shift)."
            )
    targets = [d for d in datasets if DATASETS.get(d).domain_of == source] or _shifts_of(source)
    if not targets:
        raise ConfigError(f"{source} has no shifted domains registered to evaluate on.")
    return str(source), tuple(targets)
