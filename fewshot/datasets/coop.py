"""Shared machinery of the standard datasets' readers (the CoOp / Dassl on-disk layout).

Every standard dataset is a folder under the data root, laid out as CoOp's DATASETS.md
documents it (KaiyangZhou/CoOp), so existing downloads work unchanged. Two base classes:

- :class:`CoopDataset`: a file-backed dataset. Subclasses state their facts as class
  attributes (``folder``, ``image_dir``, ``template``, ``download``, ...) and implement
  ``_read()``. It gives ``spec()``, ``splits()``, ``load_image()``, ``image_file()``,
  ``is_present()`` and ``fix_hint()``, and caches what it read (per instance, and for the
  last few datasets in the process, keyed by the files it read and their modification
  times), so a sweep lists ImageNet once.
- :class:`CoopSplitDataset`: a dataset read through a split file in CoOp's format,
  ``{"train": [[impath, label, classname], ...], "val": [...], "test": [...]}`` with
  ``impath`` relative to the dataset's image folder. It reads CoOp's
  ``split_zhou_<Name>.json`` when present, exactly: same item order, labels and class names
  as CoOp's readers produce. Otherwise it generates a split (below), saves it beside the data
  as ``split_generated_<Name>.json`` (atomic write) and reads that; ``spec().split_source``
  is then ``"generated"``. A CoOp file placed later takes precedence.

Generated splits follow CoOp's own generation code with its randomness made reproducible:
file listings are sorted, and every shuffle draws from one ``random.Random(SPLIT_SEED)``
created afresh for each generation, so a generated split is identical on every machine.

- *Class folders* (CoOp's ``read_and_split_data``): class folders sorted by name, label =
  position; per class, image files sorted by name, shuffled, then 50% train, 20% val, the
  rest test (``round`` as Python rounds); every part must be non-empty.
- *Official train/test lists* (CoOp's ``split_trainval``): the official test list is the
  test split; the official train list is grouped by label in order of first appearance,
  each group shuffled, and ``round(0.2 n)`` items per class go to val, the rest to train.

Class names are cleaned as CoOp's trainers clean them before prompting: ``_`` becomes a
space. Paths in split files must stay inside the dataset folder: an absolute path or a
``..`` component is an error when the split is read, and an image whose real path (after
symlinks) leaves the dataset folder is an error when it is loaded or checked. Symlinked
dataset folders and image folders, as CoOp's DATASETS.md suggests, are fine.
"""

from __future__ import annotations

import abc
import json
import os
import random
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from fewshot._io import atomic_write_text
from fewshot.datasets.base import Dataset, DatasetError
from fewshot.types import DatasetSpec, Item, Split, Splits

if TYPE_CHECKING:
    from PIL import Image

__all__ = [
    "IMAGE_EXTENSIONS",
    "SPLIT_NAMES",
    "SPLIT_SEED",
    "CoopDataset",
    "CoopSplitDataset",
    "Entries",
    "Entry",
    "Loaded",
    "clean_classname",
    "image_names",
    "path_problem",
    "read_lines",
    "read_mat",
    "read_split_file",
    "split_50_20_30",
    "split_folders",
    "split_trainval",
    "subfolders",
]

SPLIT_SEED = 1
"""Seed of the ``random.Random`` every generated split draws its shuffles from."""

SPLIT_NAMES = ("train", "val", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")

Entry = tuple[str, int, str]
"""One row of a CoOp split file: (impath relative to the image folder, label, class name)."""
Entries = list[Entry]

_CACHE_SIZE = 4
_CACHE: OrderedDict[tuple[object, ...], Loaded] = OrderedDict()
_DRIVE = re.compile(r"^[A-Za-z]:")


def clean_classname(name: str) -> str:
    """A class name as CoOp's trainers prompt it: ``_`` replaced by a space."""
    return name.replace("_", " ")


def path_problem(path: str) -> str | None:
    """Why a relative path from a split file is unsafe, or None if it stays inside its folder."""
    if not path:
        return "is empty"
    if path.startswith(("/", "\\")) or _DRIVE.match(path):
        return "is absolute"
    if ".." in path and ".." in re.split(r"[\\/]", path):
        return "climbs out with '..'"
    return None


@dataclass(frozen=True)
class Loaded:
    """What a reader read: the splits, cleaned class names in label order, the split source."""

    splits: Splits
    classnames: tuple[str, ...]
    split_source: str


# ------------------------------------------------------------------------------------------
# Reading files


def read_lines(file: Path, fix: str) -> list[str]:
    """The non-empty, stripped lines of a text file; DatasetError naming it and ``fix``."""
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise DatasetError(f"Cannot read {file} ({exc.strerror or exc}); fix: {fix}") from None
    return [line.strip() for line in text.splitlines() if line.strip()]


def read_mat(file: Path, key: str, fix: str) -> Any:
    """The ``key`` variable of a MATLAB file (scipy's ``loadmat``); DatasetError naming the
    file and ``fix`` when it cannot be read."""
    from scipy.io import loadmat  # a dependency; imported only where a split is generated
    from scipy.io.matlab import MatReadError

    try:
        return loadmat(file)[key]
    # loadmat raises NotImplementedError for MATLAB v7.3 (HDF5) files.
    except (OSError, ValueError, KeyError, TypeError, MatReadError, NotImplementedError) as exc:
        raise DatasetError(f"Cannot read {key!r} from {file} ({exc}); fix: {fix}") from None


def read_split_file(file: Path, fix: str) -> dict[str, Entries]:
    """Rows of a split file in CoOp's format; DatasetError naming the file on any problem."""
    try:
        raw = json.loads(file.read_bytes())
    except OSError as exc:
        raise DatasetError(f"Cannot read split file {file} ({exc.strerror or exc}); fix: {fix}") from None
    except ValueError as exc:
        raise DatasetError(f"Split file {file} is not valid JSON ({exc}); fix: {fix}") from None
    if not isinstance(raw, dict) or not all(isinstance(raw.get(name), list) for name in SPLIT_NAMES):
        raise DatasetError(
            f"Split file {file} does not have CoOp's shape "
            '{"train": [[impath, label, classname], ...], "val": [...], "test": [...]}; '
            f"fix: {fix}"
        )
    out: dict[str, Entries] = {}
    for name in SPLIT_NAMES:
        rows: Entries = []
        for i, row in enumerate(raw[name]):
            if not (
                isinstance(row, list)
                and len(row) == 3
                and isinstance(row[0], str)
                and type(row[1]) is int
                and isinstance(row[2], str)
            ):
                raise DatasetError(
                    f"Split file {file}: {name} entry {i} is {row!r}, not [impath, label, classname]; "
                    f"fix: {fix}"
                )
            rows.append((row[0], row[1], row[2]))
        out[name] = rows
    return out


def subfolders(folder: Path) -> list[str]:
    """Sorted names of the non-hidden sub-folders of ``folder``."""
    with os.scandir(folder) as entries:
        return sorted(e.name for e in entries if not e.name.startswith(".") and e.is_dir())


def image_names(folder: Path) -> list[str]:
    """Sorted names of the image files in ``folder`` (hidden files and other files skipped)."""
    with os.scandir(folder) as entries:
        return sorted(
            e.name
            for e in entries
            if not e.name.startswith(".") and e.name.lower().endswith(IMAGE_EXTENSIONS) and e.is_file()
        )


# ------------------------------------------------------------------------------------------
# Generating splits (CoOp's rules, made deterministic; module docstring)


def split_50_20_30(rows: Entries, rng: random.Random, where: Path | str) -> tuple[Entries, Entries, Entries]:
    """Shuffle one class's rows; 50% train, 20% val, the rest test (CoOp's rounding)."""
    rows = list(rows)
    rng.shuffle(rows)
    n = len(rows)
    n_train, n_val = round(n * 0.5), round(n * 0.2)
    if min(n_train, n_val, n - n_train - n_val) <= 0:
        raise DatasetError(
            f"{where} has {n} images of class {rows[0][2] if rows else '?'!r}, too few to split 50/20/30 "
            "(each part needs one); fix: re-extract the dataset."
        )
    return rows[:n_train], rows[n_train : n_train + n_val], rows[n_train + n_val :]


def split_folders(
    image_root: Path,
    rng: random.Random,
    *,
    ignored: tuple[str, ...] = (),
    renames: dict[str, str] | None = None,
) -> dict[str, Entries]:
    """50/20/30 train/val/test per class folder of ``image_root`` (CoOp's read_and_split_data)."""
    categories = [c for c in subfolders(image_root) if c not in ignored]
    if not categories:
        raise DatasetError(f"No class folders in {image_root}; fix: extract the dataset there.")
    out: dict[str, Entries] = {name: [] for name in SPLIT_NAMES}
    for label, category in enumerate(categories):
        classname = (renames or {}).get(category, category)
        rows = [(f"{category}/{name}", label, classname) for name in image_names(image_root / category)]
        parts = split_50_20_30(rows, rng, image_root / category)
        for name, part in zip(SPLIT_NAMES, parts, strict=True):
            out[name] += part
    return out


def split_trainval(
    rows: Entries, rng: random.Random, source: Path, p_val: float = 0.2
) -> tuple[Entries, Entries]:
    """Per label (first-appearance order), shuffle and move ``round(p_val n)`` rows to val."""
    by_label: dict[int, list[int]] = {}
    for i, row in enumerate(rows):
        by_label.setdefault(row[1], []).append(i)
    train: Entries = []
    val: Entries = []
    for label, indices in by_label.items():
        n_val = round(len(indices) * p_val)
        if n_val == 0:
            raise DatasetError(
                f"{source}: class {rows[indices[0]][2]!r} (label {label}) has {len(indices)} training "
                "images, too few to hold out a val image; fix: the file looks truncated, replace it."
            )
        rng.shuffle(indices)
        val += [rows[i] for i in indices[:n_val]]
        train += [rows[i] for i in indices[n_val:]]
    return train, val


# ------------------------------------------------------------------------------------------
# Base classes


class CoopDataset(Dataset):
    """A dataset read from files under ``$FEWSHOT_DATA/<folder>`` (module docstring)."""

    image_dir: ClassVar[str] = ""  # image folder inside the dataset folder ("" = the folder itself)
    marker: ClassVar[str | None] = None  # what must exist for is_present(); None = image_dir
    link_dirs: ClassVar[tuple[str, ...]] = ()  # more sub-folders that may be symlinks to elsewhere
    template: ClassVar[str]  # the single hand-crafted template (CoOp trainers/zsclip.py)
    templates: ClassVar[tuple[str, ...]] = ()  # prompt ensemble; empty = OpenAI's 80
    version: ClassVar[str] = "1"
    download: ClassVar[str] = "auto"
    manual: ClassVar[str] = ""  # one line of manual instructions, for download == "manual"

    def __init__(self, root: Path | str | None = None) -> None:
        super().__init__(root)
        self._loaded_data: Loaded | None = None
        self._real_dirs: dict[str, str] = {}
        self._base_dirs: tuple[str, ...] | None = None

    def __getstate__(self) -> dict[str, object]:
        """Pickled (for data-loader worker processes) without the cached splits."""
        state = dict(self.__dict__)
        state["_loaded_data"] = None
        return state

    # -- the Dataset contract

    def spec(self) -> DatasetSpec:
        classnames, split_source = self._describe()
        return DatasetSpec(
            name=self.name,
            classnames=classnames,
            template=self.template,
            version=self.version,
            split_source=split_source,
            templates=self.templates,
        )

    def splits(self) -> Splits:
        return self._loaded().splits

    def load_image(self, item: Item) -> Image.Image:
        from PIL import Image

        file = self.image_file(item)
        try:
            with Image.open(file) as image:
                return image.convert("RGB")
        except FileNotFoundError:
            raise DatasetError(f"{self.name}: missing image {file}; fix: {self.fix_hint()}") from None
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
            raise DatasetError(
                f"{self.name}: unreadable image {file} ({exc}); fix: replace it with a good copy "
                f"(re-extract the dataset; {self.fix_hint()})"
            ) from None

    def image_file(self, item: Item) -> Path:
        problem = path_problem(item.path)
        if problem:
            raise DatasetError(
                f"{self.name}: item path {item.path!r} {problem}; fix: items must be paths relative "
                f"to {self.path}"
            )
        file = self.path / item.path
        real = self._real_path(file)
        if not any(real == base or real.startswith(base + os.sep) for base in self._bases()):
            raise DatasetError(
                f"{self.name}: {file} leads outside the dataset folder {self.path} (its real path is "
                f"{real}); fix: replace the link by the file itself, or link the whole dataset folder"
            )
        return file

    def is_present(self) -> bool:
        try:
            marker = self.marker if self.marker is not None else self.image_dir
            return (self.path / marker).exists()
        except DatasetError:
            return False

    def fix_hint(self) -> str:
        if self.download == "manual":
            return f"manual: {self.manual}; see docs/datasets.md#{self.name}"
        return f"run `fewshot data download {self.name}` (see docs/datasets.md#{self.name})"

    # -- for subclasses

    @abc.abstractmethod
    def _read(self) -> Loaded:
        """Read the splits and class names from disk (the dataset folder exists)."""

    @abc.abstractmethod
    def _sources(self) -> tuple[str, ...]:
        """Paths (relative to the dataset folder) whose changes invalidate the process cache."""

    def _describe(self) -> tuple[tuple[str, ...], str]:
        """Class names and split source; readers that know them cheaply override this."""
        loaded = self._loaded()
        return loaded.classnames, loaded.split_source

    def _build(self, rows: dict[str, Entries], split_source: str, origin: Path) -> Loaded:
        """Items and class names from split-file rows; checks paths, emptiness and names."""
        prefix = f"{self.image_dir}/" if self.image_dir else ""
        names: dict[int, str] = {}
        splits: dict[str, Split] = {}
        for split in SPLIT_NAMES:
            if not rows[split]:
                raise DatasetError(
                    f"{self.name}: the {split} split of {origin} is empty; fix: {self._fix_split()}"
                )
            items = []
            for impath, label, classname in rows[split]:
                problem = path_problem(impath)
                if problem or label < 0:
                    why = problem or f"has the negative label {label}"
                    raise DatasetError(
                        f"{self.name}: {origin}: {split} entry {impath!r} {why}; fix: entries must be "
                        f"paths relative to {self.path / self.image_dir} with labels 0..N-1"
                    )
                if names.setdefault(label, classname) != classname:
                    raise DatasetError(
                        f"{self.name}: {origin}: label {label} has two class names, {names[label]!r} and "
                        f"{classname!r}; fix: {self._fix_split()}"
                    )
                items.append(Item(prefix + impath, label))
            splits[split] = Split(split, tuple(items))
        missing = [label for label in range(max(names) + 1) if label not in names]
        if missing:
            raise DatasetError(
                f"{self.name}: {origin}: labels {missing[:5]} have no images in any split, so they have no "
                f"class name; fix: {self._fix_split()}"
            )
        classnames = tuple(clean_classname(names[label]) for label in range(len(names)))
        return Loaded(Splits(splits["train"], splits["val"], splits["test"]), classnames, split_source)

    def _fix_split(self) -> str:
        return f"replace the split file ({self.fix_hint()})"

    def _need(self, relative: str) -> Path:
        """A file the reader needs; DatasetError naming it and the fix if it is missing."""
        file = self.path / relative
        if not file.exists():
            raise DatasetError(f"{self.name}: {file} is missing; fix: {self.fix_hint()}")
        return file

    # -- caching and path resolution

    def _loaded(self) -> Loaded:
        if self._loaded_data is None:
            if not self.path.is_dir():
                raise DatasetError(
                    f"{self.name}: dataset folder {self.path} not found; fix: {self.fix_hint()}"
                )
            key = self._cache_key()
            loaded = _CACHE.get(key)
            if loaded is None:
                loaded = self._read()
                _CACHE[self._cache_key()] = loaded  # the read may have written a split file
                while len(_CACHE) > _CACHE_SIZE:
                    _CACHE.popitem(last=False)
            else:
                _CACHE.move_to_end(key)
            self._loaded_data = loaded
        return self._loaded_data

    def _cache_key(self) -> tuple[object, ...]:
        stamps: list[tuple[str, int, int] | str] = []
        for relative in self._sources():
            try:
                st = os.stat(self.path / relative)
                stamps.append((relative, st.st_mtime_ns, st.st_size))
            except OSError:
                stamps.append(relative)
        return (type(self).__module__, type(self).__qualname__, os.path.realpath(self.path), tuple(stamps))

    def _bases(self) -> tuple[str, ...]:
        """Real paths an image may live under: the dataset folder and its linkable sub-folders."""
        if self._base_dirs is None:
            dirs = (self.image_dir, *self.link_dirs)
            self._base_dirs = tuple(
                os.path.realpath(self.path / d) if d else os.path.realpath(self.path) for d in ("", *dirs)
            )
        return self._base_dirs

    def _real_path(self, file: Path) -> str:
        """``os.path.realpath(file)``, with the real path of each folder cached."""
        parent = str(file.parent)
        real_parent = self._real_dirs.get(parent)
        if real_parent is None:
            real_parent = self._real_dirs[parent] = os.path.realpath(parent)
        real = os.path.join(real_parent, file.name)
        return os.path.realpath(real) if os.path.islink(real) else real


class CoopSplitDataset(CoopDataset):
    """A dataset read through a split file in CoOp's format, generated when absent."""

    split_name: ClassVar[str]  # CoOp's name of the dataset, as in split_zhou_<split_name>.json
    coop_split: ClassVar[bool] = True  # CoOp publishes a split_zhou_<split_name>.json

    @property
    def split_file(self) -> str | None:
        """CoOp's split file name, or None when CoOp publishes none for this dataset."""
        return f"split_zhou_{self.split_name}.json" if self.coop_split else None

    @property
    def generated_file(self) -> str:
        """Where a generated split is saved, beside the data."""
        return f"split_generated_{self.split_name}.json"

    def _sources(self) -> tuple[str, ...]:
        return tuple(f for f in (self.split_file, self.generated_file) if f)

    def _read(self) -> Loaded:
        if self.split_file and (self.path / self.split_file).is_file():
            file = self.path / self.split_file
            fix = f"download {self.split_file} again (see docs/datasets.md#{self.name})"
            return self._build(read_split_file(file, fix), self.split_file, file)
        file = self.path / self.generated_file
        if not file.is_file():
            rows = self._generate_items(random.Random(SPLIT_SEED))
            data = {name: [list(row) for row in rows[name]] for name in SPLIT_NAMES}
            try:
                atomic_write_text(file, json.dumps(data, separators=(",", ":")))
            except OSError as exc:
                warnings.warn(
                    f"{self.name}: could not save the generated split to {file} ({exc.strerror or exc}); "
                    "using it from memory (it is the same on every machine).",
                    stacklevel=3,
                )
                return self._build(rows, "generated", file)
        fix = f"delete {file} to generate it again"
        return self._build(read_split_file(file, fix), "generated", file)

    def _fix_split(self) -> str:
        if self.coop_split:
            return (
                f"use CoOp's {self.split_file} unchanged, or delete the generated "
                f"{self.generated_file} to generate it again (see docs/datasets.md#{self.name})"
            )
        return f"delete {self.generated_file} to generate it again (see docs/datasets.md#{self.name})"

    def _need(self, relative: str) -> Path:
        file = self.path / relative
        if not file.exists():
            coop = f"place CoOp's {self.split_file} in {self.path}, or " if self.split_file else ""
            raise DatasetError(
                f"{self.name}: {file} is missing and there is no split file; fix: {coop}"
                f"put the official files in place so that a split can be generated ({self.fix_hint()})"
            )
        return file

    @abc.abstractmethod
    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        """train / val / test rows for a generated split, from the official files (``rng`` seeded)."""
