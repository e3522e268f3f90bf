"""Places365-Standard (Zhou et al., 2017): 365 scene categories.

Folder ``$FEWSHOT_DATA/places365/``, the official release's file names (the layout torchvision
and ProAPO read; ProAPO evaluates on ``val_large``)::

    places365/
      categories_places365.txt         /a/airfield 0
      places365_train_standard.txt     /a/airfield/00000001.jpg 0
      places365_val.txt                Places365_val_00000001.jpg 165
      data_large/a/airfield/00000001.jpg ...     (or data_256/, data_large_standard/, data_256_standard/)
      val_large/Places365_val_00000001.jpg ...   (or val_256/)
      split_generated_Places365.json   (written on first use)

Class names: the category path without its initial-letter folder, ``/`` -> ``-``, then
``_`` -> space (``/a/apartment_building/outdoor`` -> "apartment building-outdoor"), the form
of ProAPO's label names.

Template: ``a photo of a {}.``, the baseline template of ProAPO
(``data/prompt_template_task_specific/clip.json``) and CLIP's default.

Splits: none published, so the split is generated (:mod:`fewshot.datasets.coop`): the official
validation set (36,500 images, 100 per class) is the test split, as in ProAPO; the official
training list (1,803,460 images) is split 80/20 per class into train and val. The first image
folder found among the names above is used and recorded in the split file's paths.

Download: ``filelist_places365-standard.tar``, ``val_large.tar`` (or ``val_256.tar``) and
``train_large_places365standard.tar`` (or ``train_256_places365standard.tar``) from the MIT
Places page, extracted in the folder. About 105 GB + 2 GB (large) or 24 GB + 0.5 GB (256).
"""

from __future__ import annotations

import random
from typing import ClassVar

from fewshot.datasets.base import DatasetError
from fewshot.datasets.coop import CoopSplitDataset, Entries, read_lines, split_trainval

__all__ = ["Places365"]

TRAIN_DIRS = ("data_large", "data_large_standard", "data_256", "data_256_standard")
VAL_DIRS = ("val_large", "val_256")


def places_classname(category: str) -> str:
    """``/a/apartment_building/outdoor`` -> ``apartment_building-outdoor``."""
    return category.split("/", 2)[-1].replace("/", "-")


class Places365(CoopSplitDataset):
    """Places365-Standard with the official val set as test (module docstring)."""

    name: ClassVar[str] = "places365"
    folder: ClassVar[str] = "places365"
    image_dir: ClassVar[str] = ""
    marker: ClassVar[str | None] = "categories_places365.txt"
    link_dirs: ClassVar[tuple[str, ...]] = TRAIN_DIRS + VAL_DIRS
    split_name: ClassVar[str] = "Places365"
    coop_split: ClassVar[bool] = False
    template: ClassVar[str] = "a photo of a {}."

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        names: dict[int, str] = {}
        categories = self._need("categories_places365.txt")
        for line in read_lines(categories, self.fix_hint()):
            category, _, label = line.rpartition(" ")
            if not label.isdigit():
                raise DatasetError(f"{self.name}: {categories}: bad line {line!r}; fix: {self.fix_hint()}")
            names[int(label)] = places_classname(category)
        train_dir, val_dir = self._image_dir(TRAIN_DIRS), self._image_dir(VAL_DIRS)
        trainval = self._read_list("places365_train_standard.txt", train_dir, names)
        train, val = split_trainval(trainval, rng, self.path / "places365_train_standard.txt")
        return {"train": train, "val": val, "test": self._read_list("places365_val.txt", val_dir, names)}

    def _image_dir(self, candidates: tuple[str, ...]) -> str:
        for name in candidates:
            if (self.path / name).is_dir():
                return name
        raise DatasetError(
            f"{self.name}: none of the image folders {', '.join(candidates)} is in {self.path}; "
            f"fix: {self.fix_hint()}"
        )

    def _read_list(self, name: str, image_dir: str, names: dict[int, str]) -> Entries:
        file = self._need(name)
        rows: Entries = []
        for line in read_lines(file, self.fix_hint()):
            image, _, label = line.rpartition(" ")
            if not label.isdigit() or int(label) not in names:
                raise DatasetError(f"{self.name}: {file}: bad line {line!r}; fix: {self.fix_hint()}")
            rows.append((f"{image_dir}/{image.lstrip('/')}", int(label), names[int(label)]))
        return rows
