"""The toy datasets: procedural images of the toy world (fewshot/toyworld), no data root needed.

Items are virtual: ``Item(path="test/000123", label)`` names a split and an index, and
:meth:`ToyDataset.load_image` renders that image deterministically from (dataset, split,
index). Class definitions, templates and split sizes live in
:mod:`fewshot.toyworld.catalog`; see docs/toyworld.md.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from fewshot.datasets.base import Dataset, DatasetError
from fewshot.toyworld.catalog import SPLIT_SIZES, TOY_DATASETS, ToyDatasetDef, class_descriptions
from fewshot.types import DatasetSpec, Item, Split, Splits

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["ToyColors", "ToyDataset", "ToyObjects", "ToyShapes", "ToyShapesSketch", "ToyTextures"]

TOY_VERSION = "3"  # bump when rendering or split sizes change: cached features then go stale


def toy_version(definition: ToyDatasetDef) -> str:
    """``TOY_VERSION`` plus a digest of the dataset's definition (classes, viewing, contrast,
    domain, prompts), so that editing one dataset's definition makes its cache entries and
    records stale without a manual bump; rendering code changes still need one."""
    digest = hashlib.sha256(repr(definition).encode()).hexdigest()[:8]
    return f"{TOY_VERSION}.{digest}"


@cache
def _splits(name: str) -> Splits:
    n_classes = len(TOY_DATASETS[name].classes)

    def split(split_name: str) -> Split:
        per_class = SPLIT_SIZES[split_name]
        items = tuple(Item(f"{split_name}/{i:06d}", i // per_class) for i in range(per_class * n_classes))
        return Split(split_name, items)

    return Splits(split("train"), split("val"), split("test"))


class ToyDataset(Dataset):
    """A procedural toy dataset; ignores the data root."""

    @classmethod
    def declared_template(cls) -> str:
        return TOY_DATASETS[cls.name].template

    @property
    def definition(self) -> ToyDatasetDef:
        """Classes, prompts and rendering domain (:mod:`fewshot.toyworld.catalog`)."""
        return TOY_DATASETS[self.name]

    @property
    def path(self) -> Path:
        # Nothing is read from disk; point at the package folder that defines the world.
        return Path(__file__).resolve().parent.parent / "toyworld"

    def is_present(self) -> bool:
        return True

    def fix_hint(self) -> str:
        return f"{self.name} is rendered on the fly; nothing to download"

    def spec(self) -> DatasetSpec:
        d = self.definition
        return DatasetSpec(
            name=self.name,
            classnames=d.classnames,
            template=d.template,
            version=toy_version(d),
            split_source="toyworld",
            templates=d.templates,
        )

    def splits(self) -> Splits:
        return _splits(self.name)

    def load_image(self, item: Item) -> Image.Image:
        from fewshot.toyworld.world import render_item

        split, _, index = item.path.partition("/")
        if split not in SPLIT_SIZES or not index.isdigit():
            raise DatasetError(
                f"Bad toy item path {item.path!r} for {self.name}: expected SPLIT/INDEX with SPLIT one of "
                f"{', '.join(SPLIT_SIZES)}; use items from {self.name}.splits()."
            )
        per_class = SPLIT_SIZES[split]
        i = int(index)
        if i >= per_class * len(self.definition.classes):
            raise DatasetError(f"Toy item {item.path!r} is out of range for {self.name}; use its splits().")
        return render_item(self.name, split, i, per_class)

    def descriptions(self) -> dict[str, list[str]]:
        """Per class name, short descriptive sentences (for description-based prompting)."""
        return {c: class_descriptions(c) for c in self.definition.classnames}


class ToyShapes(ToyDataset):
    """12 shapes; colour, texture, size, count, background and noise vary."""

    name: ClassVar[str] = "toy-shapes"


class ToyColors(ToyDataset):
    """12 object colours of one small outlined object; shape, background and noise vary."""

    name: ClassVar[str] = "toy-colors"


class ToyTextures(ToyDataset):
    """10 fill patterns (textures) of the objects."""

    name: ClassVar[str] = "toy-textures"


class ToyObjects(ToyDataset):
    """12 compound classes, colour x shape ("red circle"), which need both attributes."""

    name: ClassVar[str] = "toy-objects"


class ToyShapesSketch(ToyDataset):
    """toy-shapes in a shifted domain: pencil outlines on paper, stray strokes, heavier noise."""

    name: ClassVar[str] = "toy-shapes-sketch"
    domain_of: ClassVar[str | None] = "toy-shapes"
