"""The Dataset contract: how a dataset is found on disk, split, and read.

A dataset module subclasses :class:`Dataset` and is registered lazily in
``fewshot/datasets/__init__.py``. The harness calls ``spec()``, ``splits()`` and
``load_image(item)``; nothing else. Problems raise :class:`DatasetError` whose message names
the file and the fix.
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from fewshot.types import DatasetSpec, FewshotError, Item, Splits

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["Dataset", "DatasetError"]


class DatasetError(FewshotError):
    """Missing or broken data; the message names the file and the fix."""


class Dataset(abc.ABC):
    """One dataset under a data root (``$FEWSHOT_DATA``)."""

    name: ClassVar[str]
    folder: ClassVar[str] = ""  # folder under the data root, CoOp layout
    domain_of: ClassVar[str | None] = None  # for shifted domains: the source dataset's name

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root) if root is not None else None

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

    def is_present(self) -> bool:
        """Cheap check that the data seems to be there (used by `fewshot list datasets`)."""
        try:
            return self.path.is_dir()
        except DatasetError:
            return False

    def fix_hint(self) -> str:
        """One line telling the user how to get this dataset."""
        return f"place {self.name} under $FEWSHOT_DATA/{self.folder} (see docs/datasets.md)"
