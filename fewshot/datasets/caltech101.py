"""Caltech101 (Fei-Fei, Fergus and Perona, 2004): 100 object categories.

Folder ``$FEWSHOT_DATA/caltech-101/``, as CoOp's DATASETS.md lays it out::

    caltech-101/
      101_ObjectCategories/<category>/image_0001.jpg
      split_zhou_Caltech101.json

Class names: from the split file, ``_`` -> space. CoOp built its split from the category
folders without ``BACKGROUND_Google`` and ``Faces_easy``, renaming ``airplanes``, ``Faces``,
``Leopards`` and ``Motorbikes`` to airplane, face, leopard and motorbike; a generated split
does the same.

Template: ``a photo of a {}.``

Splits: CoOp's ``split_zhou_Caltech101.json`` (100 classes; 4,128 / 1,649 / 2,465 images);
without it, 50/20/30 per category folder (:mod:`fewshot.datasets.coop`).

Download: ``101_ObjectCategories.tar.gz`` (Caltech's data page), extracted in the folder, plus
the split file from CoOp's DATASETS.md (Google Drive). About 130 MB, 9,146 images.
"""

from __future__ import annotations

import random
from typing import ClassVar

from fewshot.datasets.coop import CoopSplitDataset, Entries, split_folders

__all__ = ["Caltech101"]

IGNORED = ("BACKGROUND_Google", "Faces_easy")
RENAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}


class Caltech101(CoopSplitDataset):
    """Caltech101 in CoOp's layout (module docstring)."""

    name: ClassVar[str] = "caltech101"
    folder: ClassVar[str] = "caltech-101"
    image_dir: ClassVar[str] = "101_ObjectCategories"
    split_name: ClassVar[str] = "Caltech101"
    template: ClassVar[str] = "a photo of a {}."

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        return split_folders(self._need(self.image_dir), rng, ignored=IGNORED, renames=RENAMES)
