"""Food-101 (Bossard, Guillaumin and Van Gool, 2014): 101 dishes.

Folder ``$FEWSHOT_DATA/food-101/`` (the extracted ``food-101.tar.gz``, as CoOp's DATASETS.md
lays it out)::

    food-101/
      images/<dish>/<id>.jpg
      meta/  license_agreement.txt  README.txt
      split_zhou_Food101.json

Class names: from the split file (the folder names, e.g. ``apple_pie``), ``_`` -> space.

Template: ``a photo of {}, a type of food.``

Splits: CoOp's ``split_zhou_Food101.json`` (101 classes; 50,500 / 20,200 / 30,300 images);
without it, 50/20/30 per dish folder (:mod:`fewshot.datasets.coop`).

Download: ``food-101.tar.gz`` from the ETH Zurich page, extracted in the data root, plus the
split file from CoOp's DATASETS.md (Google Drive). About 5 GB, 101,000 images.
"""

from __future__ import annotations

import random
from typing import ClassVar

from fewshot.datasets.coop import CoopSplitDataset, Entries, split_folders

__all__ = ["Food101"]


class Food101(CoopSplitDataset):
    """Food-101 in CoOp's layout (module docstring)."""

    name: ClassVar[str] = "food101"
    folder: ClassVar[str] = "food-101"
    image_dir: ClassVar[str] = "images"
    split_name: ClassVar[str] = "Food101"
    template: ClassVar[str] = "a photo of {}, a type of food."

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        return split_folders(self._need(self.image_dir), rng)
