"""Content-addressed on-disk cache of image features, and the image sources of few-shot subsets.

Cache layout under the root (``$FEWSHOT_CACHE``, default ``<user cache dir>/fewshot``)::

    features/<backbone safe name>/<dataset>/<digest>.pt     torch.save({"features", "labels", "ids"})
    features/<backbone safe name>/<dataset>/<digest>.json   sidecar: full key, shape, dtype, sha256, created
    subsets/<dataset>/<split hash>/shot_K-seed_S.json        few-shot subsets (fewshot.protocols)

``digest`` hashes every input that changes the tensor (:class:`FeatureKey`). Features are the
raw, unnormalised encoder outputs in float32. An entry is valid only when both files exist,
the tensor file's sha256 matches the sidecar, it loads with ``weights_only=True`` and its
shapes match the sidecar; anything else is reported with a warning, deleted and recomputed.
Each file is written to a temp file in its folder and moved into place with ``os.replace``,
tensor file first: a killed process leaves the old state, or a tensor file without sidecar,
which counts as absent and is overwritten.

Augmented views: view ``v`` of an item is the backbone's ``train_transform`` run under torch's
RNG seeded from (view, item path), so it is the same crop in every run, whatever subset or
batch the item is in. Transforms must draw their randomness from torch (torchvision's do).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import os
import sys
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from fewshot._io import atomic_write_bytes
from fewshot.types import (
    BackboneSpec,
    ConfigError,
    FeatureSet,
    FewshotError,
    Item,
    Split,
    safe_name,
    stable_hash,
)

if TYPE_CHECKING:
    from PIL import Image

    from fewshot.backbones import Backbone
    from fewshot.datasets.base import Dataset

__all__ = [
    "FORMAT_VERSION",
    "FeatureCache",
    "FeatureKey",
    "SubsetImages",
    "default_cache_root",
    "encode_items",
    "encode_views",
    "feature_key",
]

FORMAT_VERSION = 1  # bump when the stored layout or the view seeding changes
_VIEW_SEED = 0  # base of the per-(view, item) seeds of cached augmented views

Progress = Callable[[int, str], Iterator[int]]  # same shape as FitContext.progress


def default_cache_root() -> Path:
    """``$FEWSHOT_CACHE``, else ``fewshot`` under the platform's user cache folder."""
    env = os.environ.get("FEWSHOT_CACHE")
    if env:
        return Path(env).expanduser()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = Path.home() / "Library" / "Caches"
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "fewshot"


@dataclass(frozen=True)
class FeatureKey:
    """Everything that determines a cached feature tensor; ``digest`` names the entry."""

    backbone: str  # canonical backbone id (BackboneSpec.id)
    weights_digest: str
    dataset: str
    dataset_version: str
    split_hash: str  # hash of the split the items come from ("" if not from one split)
    items_hash: str  # hash of the exact (path, label) list encoded
    transform: str  # Backbone.transform_id(augment)
    view: int | None = None  # None: test transform; v >= 0: augmented view v
    precision: str = "float32"  # encoder weights' dtype, plus the autocast dtype when active
    normalized: bool = False  # we store raw features
    format_version: int = FORMAT_VERSION

    @property
    def digest(self) -> str:
        return stable_hash(dataclasses.asdict(self), 32)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _items_hash(items: Sequence[Item]) -> str:
    # Same formula as Split.hash, so a whole split's items hash equals its split hash.
    return stable_hash([[it.path, it.label] for it in items])


def feature_key(
    backbone: Backbone,
    dataset: Dataset,
    items: Sequence[Item],
    *,
    view: int | None = None,
    split_hash: str = "",
) -> FeatureKey:
    """The cache key of ``items`` of ``dataset`` through ``backbone`` (test transform or view)."""
    spec = dataset.spec()
    return FeatureKey(
        backbone=backbone.spec.id,
        weights_digest=backbone.weights_digest,
        dataset=spec.name,
        dataset_version=spec.version,
        split_hash=split_hash,
        items_hash=_items_hash(items),
        transform=backbone.transform_id(view is not None),
        view=view,
        precision=_precision(backbone),
    )


def _precision(backbone: Backbone) -> str:
    """The dtype the image encoder computes in: its weights' dtype, or autocast's when active.

    Encoding inside an autocast block (as evaluation on GPU may be) gives other numbers than
    encoding outside it, so the two must not share a cache entry.
    """
    model = getattr(backbone, "model", None)
    visual = getattr(model, "visual", model)
    params = visual.parameters() if isinstance(visual, torch.nn.Module) else iter(())
    first = next(params, None)
    dtype = str(first.dtype if first is not None else torch.float32).removeprefix("torch.")
    amp = _autocast_dtype(torch.device(backbone.device).type)
    return f"{dtype}+autocast-{str(amp).removeprefix('torch.')}" if amp is not None else dtype


def _autocast_dtype(device_type: str) -> torch.dtype | None:
    """The active autocast dtype for ``device_type`` ("cuda" or "cpu"), or None."""
    if device_type not in ("cuda", "cpu"):
        return None
    try:
        enabled, dtype = torch.is_autocast_enabled(device_type), torch.get_autocast_dtype(device_type)
    except (TypeError, AttributeError):  # torch < 2.4 has per-device functions
        cuda = device_type == "cuda"
        enabled = torch.is_autocast_enabled() if cuda else torch.is_autocast_cpu_enabled()
        dtype = torch.get_autocast_gpu_dtype() if cuda else torch.get_autocast_cpu_dtype()
    return dtype if enabled else None


def _backbone_dir(backbone: str) -> str:
    try:
        return BackboneSpec.parse(backbone).safe_name
    except ConfigError:  # already a safe name, as `fewshot cache clear --backbone` may pass
        return safe_name(backbone)


class _CorruptEntry(Exception):
    pass


class FeatureCache:
    """Content-addressed feature store (see the module docstring for layout and guarantees).

    Counters for the run's cost report: ``images_encoded`` (image encodings actually computed,
    views included), ``hits`` and ``misses`` (entry look-ups).
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.images_encoded = 0
        self.hits = 0
        self.misses = 0

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    def path(self, key: FeatureKey) -> Path:
        """The tensor file of ``key``'s entry (the sidecar is the same path with ``.json``)."""
        folder = self.root / "features" / _backbone_dir(key.backbone) / safe_name(key.dataset)
        return folder / f"{key.digest}.pt"

    def get_or_compute(self, key: FeatureKey, fn: Callable[[], FeatureSet]) -> FeatureSet:
        """The cached features of ``key``, or ``fn()`` stored under ``key`` and returned."""
        found = self.load(key)
        return found if found is not None else self.put(key, fn())

    def load(self, key: FeatureKey) -> FeatureSet | None:
        """The entry of ``key`` if present and valid; a corrupt entry is reported and deleted."""
        tensor_path = self.path(key)
        meta_path = tensor_path.with_suffix(".json")
        if not meta_path.exists():
            self.misses += 1
            return None
        try:
            found = self._read(tensor_path, meta_path, key)
        # Any failure to read an entry (truncation, bad zip, bad JSON, wrong shapes) means the
        # same thing: the entry cannot be trusted, so it is recomputed.
        except Exception as exc:
            warnings.warn(
                f"Feature cache entry {tensor_path} is corrupt ({type(exc).__name__}: {exc}); "
                "deleting and recomputing it.",
                stacklevel=2,
            )
            tensor_path.unlink(missing_ok=True)
            meta_path.unlink(missing_ok=True)
            self.misses += 1
            return None
        self.hits += 1
        return found

    def _read(self, tensor_path: Path, meta_path: Path, key: FeatureKey) -> FeatureSet:
        meta = json.loads(meta_path.read_text())
        data = tensor_path.read_bytes()
        if hashlib.sha256(data).hexdigest() != meta["sha256"]:
            raise _CorruptEntry("checksum mismatch")
        if meta["key"] != key.to_dict():
            raise _CorruptEntry("stored key differs from the requested key")
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        features, labels, ids = payload["features"], payload["labels"], tuple(payload["ids"])
        n = int(features.shape[0])
        if list(features.shape) != meta["shape"] or labels.shape != (n,) or len(ids) != n:
            raise _CorruptEntry("shape mismatch")
        return FeatureSet(features, labels, ids, key.digest)

    def put(self, key: FeatureKey, features: FeatureSet) -> FeatureSet:
        """Store ``features`` under ``key`` (atomically) and return them with ``key`` set."""
        feats = features.features.detach().to("cpu", torch.float32).clone()  # clone: no shared storage
        labels = features.labels.detach().to("cpu", torch.long).clone()
        if feats.ndim != 2 or labels.shape != (feats.shape[0],) or len(features.ids) != feats.shape[0]:
            raise ValueError(f"FeatureSet shapes disagree: {tuple(feats.shape)}, {tuple(labels.shape)}.")
        buffer = io.BytesIO()
        torch.save({"features": feats, "labels": labels, "ids": list(features.ids)}, buffer)
        data = buffer.getvalue()
        tensor_path = self.path(key)
        meta = {
            "key": key.to_dict(),
            "digest": key.digest,
            "shape": list(feats.shape),
            "dtype": str(feats.dtype).removeprefix("torch."),
            "sha256": hashlib.sha256(data).hexdigest(),
            "bytes": len(data),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        atomic_write_bytes(tensor_path, data)
        atomic_write_bytes(tensor_path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        return FeatureSet(feats, labels, tuple(features.ids), key.digest)

    def ls(self) -> list[dict[str, Any]]:
        """One dict per entry: backbone, dataset, n, dim, view, transform, size, created, digest, path."""
        entries = []
        for meta_path in sorted(self.root.glob("features/*/*/*.json")):
            try:
                meta = json.loads(meta_path.read_text())
                key, shape = meta["key"], meta["shape"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # unreadable sidecar: the entry is recomputed on its next use
            tensor_path = meta_path.with_suffix(".pt")
            size = meta_path.stat().st_size + (tensor_path.stat().st_size if tensor_path.exists() else 0)
            entries.append(
                {
                    "backbone": key["backbone"],
                    "dataset": key["dataset"],
                    "n": shape[0],
                    "dim": shape[1] if len(shape) > 1 else 0,
                    "view": key.get("view"),
                    "transform": key.get("transform"),
                    "size": size,
                    "created": meta.get("created", ""),
                    "digest": meta.get("digest", meta_path.stem),
                    "path": str(tensor_path),
                }
            )
        return entries

    def clear(self, backbone: str | None = None, dataset: str | None = None) -> int:
        """Delete feature entries (all, or of one backbone and/or dataset); return how many."""
        folders = self.root / "features"
        pattern = f"{_backbone_dir(backbone) if backbone else '*'}/{safe_name(dataset) if dataset else '*'}"
        removed = 0
        for folder in sorted(p for p in folders.glob(pattern) if p.is_dir()):
            stems = {
                f.stem
                for f in folder.iterdir()
                if f.suffix in (".pt", ".json") and not f.name.startswith(".")
            }
            for file in folder.iterdir():
                if file.is_file():
                    file.unlink(missing_ok=True)  # temp leftovers of killed writers go too
            removed += len(stems)
            _remove_empty(folder, stop=folders)
        return removed

    def size_bytes(self) -> int:
        """Total size of the files under the cache root."""
        if not self.root.exists():
            return 0
        return sum(f.stat().st_size for f in self.root.rglob("*") if f.is_file())


def _remove_empty(folder: Path, stop: Path) -> None:
    """Remove ``folder`` and its parents up to (not including) ``stop`` while they are empty."""
    while folder != stop and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent


# ------------------------------------------------------------------------------------------
# Encoding


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
) -> list[torch.Tensor]:
    """Encode ``items`` under each of ``views`` in one pass over the images; one (n, D) per view."""
    augment = views[0] is not None
    transform = backbone.train_transform if augment else backbone.preprocess
    seeds = [[None if v is None else _seed(_VIEW_SEED, v, it.path) for v in views] for it in items]
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
    chunks: list[torch.Tensor] = []
    # zip(steps, loader): the progress iterator comes first so that it is exhausted at the end.
    for _, (images, _labels) in zip(steps, loader, strict=False):
        b, v = images.shape[:2]
        flat = images.flatten(0, 1).to(device, non_blocking=True)  # (B*V, 3, H, W), item-major
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
    batch_size: int = 256,
    progress: Progress | None = None,
    num_workers: int = 0,
    split_hash: str = "",
) -> FeatureSet:
    """Raw image features of ``items`` through ``backbone``, from the cache or computed into it.

    ``view=None`` uses the test transform (``backbone.preprocess``); ``view=v >= 0`` the
    deterministic augmented view ``v`` (``backbone.train_transform``). Labels are the items'
    raw label ids and ids their paths. ``split_hash`` names the split the items come from (a
    ``Split`` passed as ``items`` supplies it).
    """
    if view is not None and view < 0:
        raise ConfigError(f"view must be None or >= 0, got {view}.")
    items, split_hash = _as_items(items, split_hash)
    key = feature_key(backbone, dataset, items, view=view, split_hash=split_hash)
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
    batch_size: int = 256,
    progress: Progress | None = None,
    num_workers: int = 0,
    split_hash: str = "",
) -> FeatureSet:
    """``views`` augmented views of ``items``, view-major: row ``v * n + i`` is view ``v`` of item ``i``.

    Each view is its own cache entry (so 10 views reuse the entries of 5); the missing views
    are computed together in one pass over the images.
    """
    if views < 1:
        raise ConfigError(f"views must be >= 1, got {views}.")
    items, split_hash = _as_items(items, split_hash)
    keys = [feature_key(backbone, dataset, items, view=v, split_hash=split_hash) for v in range(views)]
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

    def __len__(self) -> int:
        return len(self.items)

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
            src.served += len(labels)
            yield images, labels
