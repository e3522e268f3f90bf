"""What fingerprinting image files costs: first pass (read + hash) and later passes (stat).

    python benchmarks/fingerprint_cost.py [--folder /tmp/fp-bench] [--mb 330] [--small 50000]

Writes ``--mb`` MB of incompressible "JPEGs" (random bytes, 40-180 KB, mean ~110 KB like
ImageNet's) and ``--small`` 2 KB files under ``--folder``, then times fewshot's manifests
(:mod:`fewshot.fingerprints`) on them: the first pass with the files evicted from the page
cache (``posix_fadvise DONTNEED``, so they are read from the disk) and again warm (hashing
alone), then a rerun in a new process's state (manifest parsed from disk, one stat per file)
and a rerun within one process (manifest in memory). Not part of the test run.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import ClassVar

from PIL import Image

from fewshot.datasets.base import Dataset
from fewshot.fingerprints import Manifests
from fewshot.types import DatasetSpec, Item, Split, Splits


class Files(Dataset):
    """The files of one folder as a dataset (items are their paths)."""

    name: ClassVar[str] = "bench"

    def spec(self) -> DatasetSpec:
        return DatasetSpec(self.name, ("x",), "{}")

    def splits(self) -> Splits:
        items = tuple(Item(p.name, 0) for p in sorted(self.path.iterdir()))
        return Splits(Split("train", items), Split("val", items), Split("test", items))

    def load_image(self, item: Item) -> Image.Image:
        raise NotImplementedError

    def image_file(self, item: Item) -> Path:
        return self.path / item.path


def write_files(folder: Path, sizes: list[int]) -> None:
    folder.mkdir(parents=True)
    rng = random.Random(0)
    for i, size in enumerate(sizes):
        (folder / f"{i:07d}.jpg").write_bytes(rng.randbytes(size))


def evict(folder: Path) -> None:
    for file in folder.iterdir():
        fd = os.open(file, os.O_RDONLY)
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.close(fd)


def timed(label: str, fn: Callable[[], object], n: int, mb: float) -> float:
    start = time.perf_counter()
    fn()
    dt = time.perf_counter() - start
    rate = f", {mb / dt:7.0f} MB/s" if mb else ""
    print(f"{label:<48} {dt:8.3f} s, {1e6 * dt / n:8.1f} us/file{rate}")
    return dt


def passes(root: Path, label: str, n_mb: float) -> None:
    data = Files(root)  # folder "": the dataset folder is root itself
    items = data.splits().test.items
    cache = root.parent / f"manifests-{root.name}"
    shutil.rmtree(cache, ignore_errors=True)
    evict(root)
    timed(
        f"{label}: first pass, cold (disk read + hash)",
        lambda: Manifests(cache).images_hash(data, items),
        len(items),
        n_mb,
    )
    shutil.rmtree(cache)
    timed(
        f"{label}: first pass, warm (hash only)",
        lambda: Manifests(cache).images_hash(data, items),
        len(items),
        n_mb,
    )
    timed(
        f"{label}: rerun, manifest from disk (stat)",
        lambda: Manifests(cache).images_hash(data, items),
        len(items),
        0,
    )
    warm = Manifests(cache)
    warm.images_hash(data, items)
    timed(f"{label}: rerun, manifest in memory (stat)", lambda: warm.images_hash(data, items), len(items), 0)
    timed(f"{label}: os.stat alone", lambda: [os.stat(root / it.path) for it in items], len(items), 0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--folder", type=Path, default=Path("/tmp/fp-bench"))
    parser.add_argument("--mb", type=float, default=330)
    parser.add_argument("--small", type=int, default=50_000)
    args = parser.parse_args()
    shutil.rmtree(args.folder, ignore_errors=True)
    rng = random.Random(1)
    sizes = []
    while sum(sizes) < args.mb * 1e6:
        sizes.append(rng.randint(40_000, 180_000))
    write_files(args.folder / "jpegs", sizes)
    write_files(args.folder / "small", [2_000] * args.small)
    data = os.urandom(256 << 20)
    for name in ("blake2b", "sha256"):
        h = hashlib.new(name, digest_size=16) if name == "blake2b" else hashlib.new(name)
        start = time.perf_counter()
        h.update(data)
        print(f"{name} over 256 MB in memory: {256 * 1.048576 / (time.perf_counter() - start):.0f} MB/s")
    passes(args.folder / "jpegs", f"{len(sizes)} files, {sum(sizes) / 1e6:.0f} MB", sum(sizes) / 1e6)
    passes(args.folder / "small", f"{args.small} files of 2 KB", args.small * 2e-3)
    shutil.rmtree(args.folder)


if __name__ == "__main__":
    main()
