"""Encoding images into features: whole splits, augmented views, and few-shot image sources.

- :func:`encode_items`: raw image features of a list of items (test transform), from the
  feature cache (:mod:`fewshot.features`) or computed into it.
- :func:`encode_views`: V augmented views of the support images, drawn for one run seed.
  View ``v`` of an item is the backbone's ``train_transform`` run under torch's RNG seeded
  from (run seed, view, item path): seeds 1-3 see different crops, as the official loader
  gives every run fresh ones, while one seed always sees the same crops, whatever subset or
  batch the item is in. Transforms must draw their randomness from torch (torchvision's do).
  Each view costs one encoder pass per support image.
- :class:`SubsetImages`: the images of a few-shot subset, for online augmentation and for
  methods that run images through a prompted encoder.

Cache keys are built here (:func:`fewshot.features.feature_key`), so every entry names the
bytes of its image files (:mod:`fewshot.fingerprints`): a missing or unreadable image raises
DatasetError before anything is encoded.

Every encoder pass runs at the run's precision (:mod:`fewshot.precision`): ``fp32`` as is,
``fp16``/``bf16`` under autocast; the precision is part of the cache key.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from fewshot.features import FeatureCache, feature_key
from fewshot.precision import autocast_for
from fewshot.types import ConfigError, FeatureSet, FewshotError, Item, Split, stable_hash

if TYPE_CHECKING:
    from PIL import Image

    from fewshot.backbones import Backbone
    from fewshot.datasets.base import Dataset

__all__ = ["SubsetImages", "encode_items", "encode_views"]

_VIEW_SEED = 0  # base of the per-(run seed, view, item) seeds of cached augmented views

Progress = Callable[[int, str], Iterator[int]]  # same shape as FitContext.progress


def _seed(*parts: object) -> int:
    """A 60-bit seed from a stable hash of ``parts`` (independent of PYTHONHASHSEED)."""
    return int(stable_hash([str(p) for p in parts], 15), 16)


class _Images(TorchDataset[tuple[torch.Tensor, int]]):
    """Item ``i`` -> (transformed image(s), label).

    ``seeds[i]`` lists one entry per output view: ``None`` runs ``transform`` as is, an int runs
    it under torch's RNG forked and seeded with that int (a reproducible random view). With
    ``stacked`` the views are stacked to (V, 3, H, W); otherwise the single view is returned.
    """

    def __init__(
        self,
        dataset: Dataset,
        items: Sequence[Item],
        labels: Sequence[int],
        transform: Callable[[Image.Image], torch.Tensor],
        seeds: Sequence[Sequence[int | None]],
        stacked: bool,
    ) -> None:
        self.dataset, self.items, self.labels = dataset, items, labels
        self.transform, self.seeds, self.stacked = transform, seeds, stacked

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        image = self.dataset.load_image(self.items[i])
        if image.mode != "RGB":
            image = image.convert("RGB")
        views = [self._view(image, seed) for seed in self.seeds[i]]
        return (torch.stack(views) if self.stacked else views[0]), self.labels[i]

    def _view(self, image: Image.Image, seed: int | None) -> torch.Tensor:
        if seed is None:
            return self.transform(image)
        # Fork so the global torch RNG of the caller (and of other items) is left untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image)


def _as_items(items: Split | Sequence[Item], split_hash: str) -> tuple[tuple[Item, ...], str]:
    if isinstance(items, Split):
        return items.items, split_hash or items.hash
    return tuple(items), split_hash


def _encode(
    backbone: Backbone,
    dataset: Dataset,
    items: tuple[Item, ...],
    views: tuple[int | None, ...],
    *,
    cache: FeatureCache,
    batch_size: int,
    num_workers: int,
    progress: Progress | None,
    seed: int | None,
    precision: str,
) -> list[torch.Tensor]:
    """Encode ``items`` under each of ``views`` in one pass over the images; one (n, D) per view."""
    augment = views[0] is not None
    transform = backbone.train_transform if augment else backbone.preprocess
    seeds = [[None if v is None else _seed(_VIEW_SEED, seed, v, it.path) for v in views] for it in items]
    data = _Images(dataset, items, [it.label for it in items], transform, seeds, stacked=True)
    device = torch.device(backbone.device)
    loader = DataLoader(
        data,
        batch_size=max(1, batch_size // len(views)),  # batch_size counts encoded images
        shuffle=False,
        num_workers=num_workers,
        pin_memory=device.type == "cuda",
        # Its own generator: a DataLoader draws a base seed per iteration, and encoding must
        # not move the global RNG, or a cold and a warm cache would give different runs.
        generator=torch.Generator().manual_seed(0),
    )
    name = dataset.spec().name
    steps = progress(len(loader), f"encoding {name}") if progress else iter(range(len(loader)))
    autocast = autocast_for(precision, device)
    chunks: list[torch.Tensor] = []
    # zip(steps, loader): the progress iterator comes first so that it is exhausted at the end.
    for _, (images, _labels) in zip(steps, loader, strict=False):
        b, v = images.shape[:2]
        flat = images.flatten(0, 1).to(device, non_blocking=True)  # (B*V, 3, H, W), item-major
        with torch.no_grad(), autocast():
            chunks.append(backbone.encode_images(flat).float().cpu().view(b, v, -1))
    cache.images_encoded += len(items) * len(views)
    stacked = torch.cat(chunks)  # (n, V, D)
    return [stacked[:, j].contiguous() for j in range(len(views))]


def _empty(backbone: Backbone, key: str) -> FeatureSet:
    return FeatureSet(torch.empty(0, backbone.embed_dim), torch.empty(0, dtype=torch.long), (), key)


def encode_items(
    backbone: Backbone,
    dataset: Dataset,
    items: Split | Sequence[Item],
    *,
    cache: FeatureCache,
    view: int | None = None,
    seed: int | None = None,
    precision: str = "fp32",
    batch_size: int = 256,
    progress: Progress | None = None,
    num_workers: int = 0,
    split_hash: str = "",
) -> FeatureSet:
    """Raw image features of ``items`` through ``backbone``, from the cache or computed into it.

    ``view=None`` uses the test transform (``backbone.preprocess``); ``view=v >= 0`` the
    augmented view ``v`` drawn for run seed ``seed`` (``backbone.train_transform``). The
    encoder runs at ``precision`` (fp32, fp16 or bf16). Labels are the items' raw label ids
    and ids their paths. ``split_hash`` names the split the items come from (a ``Split``
    passed as ``items`` supplies it).
    """
    if view is not None and view < 0:
        raise ConfigError(f"view must be None or >= 0, got {view}.")
    items, split_hash = _as_items(items, split_hash)
    key = feature_key(
        backbone,
        dataset,
        items,
        view=view,
        split_hash=split_hash,
        seed=seed,
        precision=precision,
        cache=cache,
    )
    if not items:
        return _empty(backbone, key.digest)

    def compute() -> FeatureSet:
        (features,) = _encode(
            backbone,
            dataset,
            items,
            (view,),
            cache=cache,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            seed=seed,
            precision=precision,
        )
        return FeatureSet(features, torch.tensor([it.label for it in items]), tuple(it.path for it in items))

    return cache.get_or_compute(key, compute)


def encode_views(
    backbone: Backbone,
    dataset: Dataset,
    items: Split | Sequence[Item],
    views: int,
    *,
    cache: FeatureCache,
    seed: int,
    precision: str = "fp32",
    batch_size: int = 256,
    progress: Progress | None = None,
    num_workers: int = 0,
    split_hash: str = "",
) -> FeatureSet:
    """``views`` augmented views of ``items`` drawn for run seed ``seed``, view-major: row
    ``v * n + i`` is view ``v`` of item ``i``.

    Each view is its own cache entry (so 10 views reuse the entries of 5); the missing views
    are computed together in one pass over the images.
    """
    if views < 1:
        raise ConfigError(f"views must be >= 1, got {views}.")
    items, split_hash = _as_items(items, split_hash)
    # One key built (its images fingerprinted once); the views' keys differ in view only.
    first = feature_key(
        backbone, dataset, items, view=0, split_hash=split_hash, seed=seed, precision=precision, cache=cache
    )
    keys = [dataclasses.replace(first, view=v) for v in range(views)]
    joint_key = stable_hash([k.digest for k in keys], 32)
    if not items:
        return _empty(backbone, joint_key)
    found = {v: cache.load(k) for v, k in enumerate(keys)}
    missing = tuple(v for v, fs in found.items() if fs is None)
    if missing:
        computed = _encode(
            backbone,
            dataset,
            items,
            missing,
            cache=cache,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=progress,
            seed=seed,
            precision=precision,
        )
        labels, ids = torch.tensor([it.label for it in items]), tuple(it.path for it in items)
        for v, features in zip(missing, computed, strict=True):
            found[v] = cache.put(keys[v], FeatureSet(features, labels, ids))
    parts = [found[v] for v in range(views)]
    return FeatureSet(
        torch.cat([p.features for p in parts if p is not None]),
        torch.cat([p.labels for p in parts if p is not None]),
        tuple(i for p in parts if p is not None for i in p.ids),
        joint_key,
    )


# ------------------------------------------------------------------------------------------
# Images of a few-shot subset (for online augmentation and IMAGES methods)


class SubsetImages:
    """The images of a few-shot subset, relabelled; implements ``methods.base.ImageSource``."""

    def __init__(
        self,
        dataset: Dataset,
        items: Sequence[Item],
        backbone: Backbone,
        relabel: dict[int, int],
        *,
        num_workers: int = 0,
    ) -> None:
        self.dataset, self.items, self.backbone = dataset, tuple(items), backbone
        unknown = sorted({it.label for it in self.items if it.label not in relabel})
        if unknown:
            raise FewshotError(f"SubsetImages: labels {unknown[:5]} are not in the training label space.")
        self.labels = [relabel[it.label] for it in self.items]
        self.num_workers = num_workers
        self.served = 0  # images handed out by the loaders: a method encodes each one (cost)
        self.parent: SubsetImages | None = None  # the source this one was derived from

    def __len__(self) -> int:
        return len(self.items)

    def derive(
        self, *, labels: Sequence[int] | None = None, backbone: Backbone | None = None
    ) -> SubsetImages:
        """The same images with other ``labels`` and/or ``backbone``'s transforms; what the
        new source serves also counts as served by this one."""
        new = copy.copy(self)
        if labels is not None:
            if len(labels) != len(self.items):
                raise ValueError(f"derive: {len(labels)} labels for {len(self.items)} images.")
            new.labels = list(labels)
        new.backbone = backbone if backbone is not None else self.backbone
        new.served, new.parent = 0, self
        return new

    def count_served(self, n: int) -> None:
        """Add ``n`` images to this source's ``served`` count and to its parents'."""
        self.served += n
        if self.parent is not None:
            self.parent.count_served(n)

    def loader(
        self,
        batch_size: int,
        *,
        augment: bool,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> _EpochLoader:
        """Batches ``(images (B, 3, H, W), labels (B,))``; iterate it once per epoch.

        With ``augment`` every pass draws fresh crops, from ``generator`` when given (so a
        seeded generator reproduces them); shuffling draws from it too.
        """
        return _EpochLoader(self, batch_size, augment, shuffle, generator, drop_last)


class _EpochLoader:
    """A re-iterable loader: each ``iter()`` is one pass with fresh augmentation seeds."""

    def __init__(
        self,
        source: SubsetImages,
        batch_size: int,
        augment: bool,
        shuffle: bool,
        generator: torch.Generator | None,
        drop_last: bool,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.source, self.batch_size, self.augment = source, batch_size, augment
        self.shuffle, self.generator, self.drop_last = shuffle, generator, drop_last

    def __len__(self) -> int:
        n = len(self.source)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        src = self.source
        if self.augment:
            # One draw per pass; item i's crop is seeded from (pass seed, i), so it does not
            # depend on batch order, worker count or what else uses the global RNG.
            base = int(torch.randint(0, 2**62, (1,), generator=self.generator).item())
            seeds: list[list[int | None]] = [[_seed(base, i)] for i in range(len(src))]
            transform = src.backbone.train_transform
        else:
            seeds, transform = [[None]] * len(src), src.backbone.preprocess
        data = _Images(src.dataset, src.items, src.labels, transform, seeds, stacked=False)
        loader = DataLoader(
            data,
            batch_size=self.batch_size,
            shuffle=self.shuffle,
            generator=self.generator,
            drop_last=self.drop_last,
            num_workers=src.num_workers,
            pin_memory=torch.device(src.backbone.device).type == "cuda",
        )
        for images, labels in loader:
            src.count_served(len(labels))
            yield images, labels
