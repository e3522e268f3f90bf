"""The Dataset contract: how a dataset is found on disk, split, read and checked.

A dataset module subclasses :class:`Dataset` and is registered lazily in
``fewshot/datasets/__init__.py``. The harness calls ``spec()``, ``splits()`` and
``load_image(item)``; ``fewshot data check`` calls ``check()``. Problems raise
:class:`DatasetError` whose message names the file and the fix.

The readers of the standard datasets share one base class, ``fewshot.datasets.coop``.
"""

from __future__ import annotations

import abc
import os
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from fewshot.types import DatasetSpec, FewshotError, Item, Splits

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["CHECK_LIMIT", "Dataset", "DatasetError"]

CHECK_LIMIT = 50
"""At most this many problems are listed one by one by :meth:`Dataset.check`; a last line
counts the rest."""


class DatasetError(FewshotError):
    """Missing or broken data; the message names the file and the fix."""


class Dataset(abc.ABC):
    """One dataset under a data root (``$FEWSHOT_DATA``)."""

    name: ClassVar[str]
    folder: ClassVar[str] = ""  # folder under the data root, CoOp layout
    domain_of: ClassVar[str | None] = None  # for shifted domains: the source dataset's name
    # Evaluation-only datasets (ImageNet's shifts) have no train split of their own (train =
    # val = test, as in CoOp): they can be targets, never the dataset a method is fitted on.
    eval_only: ClassVar[bool] = False
    # How to get the data: "auto" (`fewshot data download NAME`), "manual" (instructions in
    # fix_hint and docs/datasets.md), or "none" (nothing to download: generated datasets).
    download: ClassVar[str] = "none"

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else None

    @classmethod
    def declared_template(cls) -> str:
        """The single hand-crafted template ("{}" = class name) known without the data, for
        presets; "" when only :meth:`spec` knows it."""
        template = getattr(cls, "template", "")
        return template if isinstance(template, str) else ""

    @property
    def path(self) -> Path:
        if self.root is None:
            raise DatasetError(f"No data root for {self.name}: set $FEWSHOT_DATA or pass --data-root.")
        return self.root / self.folder

    @abc.abstractmethod
    def spec(self) -> DatasetSpec:
        """Name, class names in label order, templates, version, split source."""

    @abc.abstractmethod
    def splits(self) -> Splits:
        """train / val / test; raise DatasetError if data is missing or broken."""

    @abc.abstractmethod
    def load_image(self, item: Item) -> Image.Image:
        """The RGB image of an item."""

    def image_file(self, item: Item) -> Path | None:
        """The file behind ``item``, or None when items are not files (generated datasets).

        File-backed datasets override this; it raises :class:`DatasetError` when the item's
        path leaves the dataset folder. Feature cache keys fingerprint these files' bytes
        (:mod:`fewshot.fingerprints`); None leaves the dataset's version to name the images.
        """
        return None

    def is_present(self) -> bool:
        """Cheap check that the data seems to be there (used by `fewshot list datasets`)."""
        try:
            return self.path.is_dir()
        except DatasetError:
            return False

    def check_trainable(self) -> None:
        """Raise if a method may not be fitted on this dataset (it would train on test images)."""
        if self.eval_only:
            source = f" (trained on {self.domain_of})" if self.domain_of else ""
            raise DatasetError(
                f"{self.name} is evaluation-only: its train split is its test set. Use it as a target: "
                f"--protocol domain-generalization{source}, e.g. `fewshot run --protocol "
                f"domain-generalization -d {self.domain_of or 'SOURCE'}`."
            )

    def fix_hint(self) -> str:
        """One line telling the user how to get this dataset."""
        return f"place {self.name} under $FEWSHOT_DATA/{self.folder} (see docs/datasets.md)"

    def check(self, deep: bool = False) -> list[str]:
        """Problems with the data on disk, one line each naming the file and the fix.

        Reads the splits, then looks at the file of every item once: it must exist and stay
        inside the dataset folder; with ``deep`` each image is also decoded. An empty list
        means the dataset is usable. At most :data:`CHECK_LIMIT` problems are listed.
        """
        try:
            splits = self.splits()
        except DatasetError as exc:
            return [str(exc)]
        problems: list[str] = []
        more = 0
        seen: set[str] = set()
        for split in (splits.train, splits.val, splits.test):
            for item in split.items:
                if item.path in seen:
                    continue
                seen.add(item.path)
                problem = self._check_item(item, split.name, deep)
                if problem is None:
                    continue
                if len(problems) < CHECK_LIMIT:
                    problems.append(problem)
                else:
                    more += 1
        if more:
            problems.append(f"{self.name}: ... and {more} more problems like the ones above.")
        return problems

    def _check_item(self, item: Item, split: str, deep: bool) -> str | None:
        """The problem with one item's file, or None."""
        try:
            file = self.image_file(item)
        except DatasetError as exc:
            return str(exc)
        if file is None:
            return None
        try:
            os.stat(file)
        except OSError:
            return f"{self.name}: missing image {file} (in the {split} split); fix: {self.fix_hint()}"
        if deep:
            try:
                self.load_image(item)
            except DatasetError as exc:
                return str(exc)
        return None
