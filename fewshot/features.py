"""Content-addressed on-disk cache of image features (the store; encoding is :mod:`fewshot.encoding`).

Cache layout under the root (``$FEWSHOT_CACHE``, default ``<user cache dir>/fewshot``)::

    features/<backbone safe name>/<dataset>/<digest>.pt     torch.save({"features", "labels", "ids"})
    features/<backbone safe name>/<dataset>/<digest>.json   sidecar: full key, shape, dtype, sha256, created
    manifests/<dataset>/<folder hash>.json                   image files' size, mtime, content hash
    subsets/<dataset>/<split hash>/shot_K-seed_S.json        few-shot subsets (fewshot.protocols)

``digest`` hashes every input that changes the tensor (:class:`FeatureKey`), the bytes of the
image files included (``images``: :mod:`fewshot.fingerprints`, whose manifests live under
``manifests/``), so two data roots share entries only when their images are identical, and a
changed image recomputes exactly the entries that contain it. Features are the
raw, unnormalised encoder outputs in float32. An entry is valid only when both files exist,
the tensor file's sha256 matches the sidecar, it loads with ``weights_only=True`` and its
shapes match the sidecar; anything else is reported with a warning, deleted and recomputed.
Each file is written to a temp file in its folder and moved into place with ``os.replace``,
tensor file first: a killed process leaves the old state, or a tensor file without sidecar,
which counts as absent and is overwritten.

The key of an augmented view names the run seed that drew it (``FeatureKey.seed``): seeds
1-3 train on different crops, as the official loader draws fresh ones per run, and rerunning
one seed reuses its own views. The key's ``precision`` is the run's: features encoded under
fp16 or bf16 autocast never share an entry with fp32 ones.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import io
import json
import os
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from fewshot._io import atomic_write_bytes, ensure_writable_dir
from fewshot.fingerprints import Manifests
from fewshot.precision import autocast_dtype
from fewshot.types import (
    BackboneSpec,
    ConfigError,
    FeatureSet,
    Item,
    safe_name,
    stable_hash,
)

if TYPE_CHECKING:
    from fewshot.backbones import Backbone
    from fewshot.datasets.base import Dataset

__all__ = [
    "FORMAT_VERSION",
    "FeatureCache",
    "FeatureKey",
    "default_cache_root",
    "feature_key",
]

# Bump when the stored layout, the key or the view seeding changes (2: views per run seed;
# 3: keys name the image files' bytes, FeatureKey.images).
FORMAT_VERSION = 3


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
    images: str  # fingerprint of those items' file bytes (fewshot.fingerprints), or "generated"
    transform: str  # Backbone.transform_id(augment)
    view: int | None = None  # None: test transform; v >= 0: augmented view v
    seed: int | None = None  # the run seed that drew an augmented view (None for the test transform)
    precision: str = "float32"  # encoder weights' dtype, plus the run's autocast dtype (if any)
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
    seed: int | None = None,
    precision: str = "fp32",
    cache: FeatureCache | None = None,
) -> FeatureKey:
    """The cache key of ``items`` of ``dataset`` through ``backbone`` (test transform, or
    augmented view ``view`` drawn for run seed ``seed``) at the run's ``precision``.

    The items' image files are fingerprinted through ``cache``'s manifests (without a cache,
    every file is read); a missing or unreadable file raises DatasetError naming it.
    """
    spec = dataset.spec()
    if view is not None and seed is None:
        raise ValueError("An augmented view's key needs the run seed that draws it.")
    return FeatureKey(
        backbone=backbone.spec.id,
        weights_digest=backbone.weights_digest,
        dataset=spec.name,
        dataset_version=spec.version,
        split_hash=split_hash,
        items_hash=_items_hash(items),
        images=(cache.manifests if cache is not None else Manifests(None)).images_hash(dataset, items),
        transform=backbone.transform_id(view is not None),
        view=view,
        seed=seed if view is not None else None,
        precision=encoder_precision(backbone, precision),
    )


def encoder_precision(backbone: Backbone, precision: str) -> str:
    """What the image encoder computes in: its weights' dtype, plus autocast's for fp16/bf16.

    Encoding under autocast gives other numbers than encoding without it, so the two never
    share a cache entry.
    """
    model = getattr(backbone, "model", None)
    visual = getattr(model, "visual", model)
    params = visual.parameters() if isinstance(visual, torch.nn.Module) else iter(())
    first = next(params, None)
    dtype = str(first.dtype if first is not None else torch.float32).removeprefix("torch.")
    amp = autocast_dtype(precision)
    return f"{dtype}+autocast-{str(amp).removeprefix('torch.')}" if amp is not None else dtype


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
    views included), ``hits`` and ``misses`` (entry look-ups); ``manifests.files_hashed``
    counts the image files read to fingerprint them.
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_root()
        self.manifests = Manifests(self.root / "manifests")
        self.images_encoded = 0
        self.hits = 0
        self.misses = 0
        self.full = False  # the disk filled up: entries are no longer stored

    def __repr__(self) -> str:
        return f"FeatureCache({str(self.root)!r})"

    def check_usable(self) -> None:
        """Raise one clear error now if entries cannot be written under the root (a file in
        its place, no permission, a read-only disk), instead of failing every run later."""
        fix = "pass --cache-dir DIR or set $FEWSHOT_CACHE to a folder you can write, or use --no-cache"
        ensure_writable_dir(self.root, "The feature cache", fix)

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
        stored = FeatureSet(feats, labels, tuple(features.ids), key.digest)
        if self.full:
            return stored
        try:
            atomic_write_bytes(tensor_path, data)
            atomic_write_bytes(tensor_path.with_suffix(".json"), json.dumps(meta, indent=1).encode())
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
            tensor_path.unlink(missing_ok=True)  # no entry without its sidecar
            self.full = True
            warnings.warn(
                f"The feature cache {self.root} is full ({exc.strerror}): runs go on without storing "
                "features, so reruns encode them again. Free space there, or pass --cache-dir DIR.",
                stacklevel=2,
            )
        return stored

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
