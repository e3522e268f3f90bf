"""Fingerprints of the image files behind cached features.

A feature cache entry names the bytes it was computed from (``FeatureKey.images``): a hash
of the (item path, content hash) pairs of exactly its items, in order. Content hashes come
from a per-dataset **manifest** in the cache::

    manifests/<dataset>/<hash of the dataset folder's resolved path>.json
        {"format", "hash", "dataset", "folder", "files": {item path: [size, mtime_ns, digest]}}

A file is read and hashed the first time one of its items is keyed, and again only when its
size or ``mtime_ns`` changed; otherwise a ``stat`` is all it costs. The stat is taken before
the read, so a file written while it is hashed is hashed again next time. A file rewritten
with the same size *and* modification time (``touch -r``, or an archive re-extracted with
its stored mtimes over a different copy) keeps its old hash: delete
``<cache>/manifests/<dataset>`` to force a full rehash.

The content hash is BLAKE2b with a 128-bit digest over the file's bytes: in the standard
library, collision-resistant (a changed image never keeps its hash by accident), and fast on
any CPU (470-700 MB/s measured on one core; SHA-256 is faster only where the CPU has SHA
instructions). Costs, measured and extrapolated to ImageNet: docs/design.md, "Features,
views and precision"; ``benchmarks/fingerprint_cost.py`` measures them.

Manifests are written atomically (:mod:`fewshot._io`), merged with what another process
wrote meanwhile; a lost or broken manifest only costs a rehash. Generated datasets (items
that are no files: ``Dataset.image_file`` returns None) have nothing to fingerprint; their
images are named by the dataset's version, and their key's ``images`` is :data:`GENERATED`.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from fewshot._io import atomic_write_bytes
from fewshot.datasets.base import DatasetError
from fewshot.types import Item, safe_name, stable_hash

if TYPE_CHECKING:
    from fewshot.datasets.base import Dataset

__all__ = ["GENERATED", "HASH_NAME", "MANIFEST_FORMAT", "Manifests", "content_hash"]

MANIFEST_FORMAT = 1
HASH_NAME = "blake2b-128"
GENERATED = "generated"
"""``FeatureKey.images`` of items that are not files: the dataset version names them."""

Entry = tuple[int, int, str]  # size, mtime_ns, content hash
Stamp = tuple[int, int]  # size, mtime_ns


def _blake2b() -> hashlib.blake2b:
    return hashlib.blake2b(digest_size=16)


def content_hash(file: Path) -> str:
    """The hex BLAKE2b-128 of ``file``'s bytes."""
    with open(file, "rb") as fh:
        return hashlib.file_digest(fh, _blake2b).hexdigest()


class Manifests:
    """The manifests under ``root`` (None: nothing stored, every file is read each time).

    ``files_hashed`` counts the files read and hashed (the cost a manifest saves).
    """

    def __init__(self, root: Path | None) -> None:
        self.root = root
        self.files_hashed = 0
        self._memory: dict[Path, tuple[Stamp | None, dict[str, Entry]]] = {}

    def images_hash(self, dataset: Dataset, items: Sequence[Item]) -> str:
        """The fingerprint of ``items``' image files, in order; :data:`GENERATED` when no
        item is a file. Raises DatasetError naming a missing or unreadable file."""
        files = [dataset.image_file(item) for item in items]
        if all(file is None for file in files):
            return GENERATED
        hashes = self._hashes(dataset, items, files)
        return stable_hash([[item.path, h] for item, h in zip(items, hashes, strict=True)], 32)

    def path(self, dataset: Dataset) -> Path | None:
        """The manifest file of ``dataset`` (its folder resolved), or None without a root."""
        if self.root is None:
            return None
        folder = stable_hash(os.path.realpath(dataset.path), 16)
        return self.root / safe_name(dataset.name) / f"{folder}.json"

    def _hashes(self, dataset: Dataset, items: Sequence[Item], files: Sequence[Path | None]) -> list[str]:
        path = self.path(dataset)
        entries = self._load(path)
        added: dict[str, Entry] = {}
        out = []
        for item, file in zip(items, files, strict=True):
            if file is None:
                out.append(GENERATED)
                continue
            stamp = _stamp(dataset, file)
            entry = added.get(item.path) or entries.get(item.path)
            if entry is None or entry[:2] != stamp:
                entry = added[item.path] = (*stamp, self._read(dataset, file))
            out.append(entry[2])
        if added and path is not None:
            self._save(path, dataset, added)
        return out

    def _read(self, dataset: Dataset, file: Path) -> str:
        self.files_hashed += 1
        try:
            return content_hash(file)
        except OSError as exc:
            raise DatasetError(
                f"{dataset.name}: unreadable image {file} ({exc.strerror or exc}); fix: replace it with "
                f"a good copy ({dataset.fix_hint()})"
            ) from None

    def _load(self, path: Path | None) -> dict[str, Entry]:
        """The entries stored at ``path``, parsed again only when the file changed."""
        if path is None:
            return {}
        stamp = _file_stamp(path)
        remembered = self._memory.get(path)
        if remembered is not None and remembered[0] == stamp:
            return remembered[1]
        entries = _parse(path) if stamp is not None else {}
        self._memory[path] = (stamp, entries)
        return entries

    def _save(self, path: Path, dataset: Dataset, added: dict[str, Entry]) -> None:
        """Write the stored entries (re-read: another process may have added some) plus ``added``."""
        entries = {**self._load(path), **added}
        manifest = {
            "format": MANIFEST_FORMAT,
            "hash": HASH_NAME,
            "dataset": dataset.name,
            "folder": os.path.realpath(dataset.path),
            "files": {name: list(entry) for name, entry in sorted(entries.items())},
        }
        atomic_write_bytes(path, json.dumps(manifest, separators=(",", ":")).encode())
        self._memory[path] = (_file_stamp(path), entries)


def _stamp(dataset: Dataset, file: Path) -> Stamp:
    """(size, mtime_ns) of an image file; DatasetError naming it when it is missing."""
    try:
        st = os.stat(file)
    except FileNotFoundError:
        raise DatasetError(f"{dataset.name}: missing image {file}; fix: {dataset.fix_hint()}") from None
    except OSError as exc:
        raise DatasetError(
            f"{dataset.name}: unreadable image {file} ({exc.strerror or exc}); fix: {dataset.fix_hint()}"
        ) from None
    return st.st_size, st.st_mtime_ns


def _file_stamp(path: Path) -> Stamp | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_size, st.st_mtime_ns


def _parse(path: Path) -> dict[str, Entry]:
    """A manifest's valid entries; nothing from a missing, broken or other-format file."""
    try:
        raw = json.loads(path.read_bytes())
    except (OSError, ValueError):
        return {}
    if not isinstance(raw, dict) or raw.get("format") != MANIFEST_FORMAT or raw.get("hash") != HASH_NAME:
        return {}
    files = raw.get("files")
    if not isinstance(files, dict):
        return {}
    return {name: (e[0], e[1], e[2]) for name, e in files.items() if _valid(e)}


def _valid(entry: object) -> bool:
    return (
        isinstance(entry, list)
        and len(entry) == 3
        and type(entry[0]) is int
        and type(entry[1]) is int
        and isinstance(entry[2], str)
    )
