"""Oxford-IIIT Pets (Parkhi et al., 2012): 37 cat and dog breeds.

Folder ``$FEWSHOT_DATA/oxford_pets/``, as CoOp's DATASETS.md lays it out::

    oxford_pets/
      images/Abyssinian_1.jpg  ...  yorkshire_terrier_99.jpg
      annotations/trainval.txt  annotations/test.txt  ...
      split_zhou_OxfordPets.json

Class names: from the split file: the breed part of the file name, lower-cased (e.g.
``american_bulldog``), ``_`` -> space.

Template: ``a photo of a {}, a type of pet.``

Splits: CoOp's ``split_zhou_OxfordPets.json`` (37 classes; 2,944 / 736 / 3,669 images);
without it, the official ``test.txt`` is the test split and ``trainval.txt`` is split 80/20
per breed (:mod:`fewshot.datasets.coop`). Annotation lines read ``NAME CLASS SPECIES BREED``
with CLASS counted from 1.

Download: ``images.tar.gz`` and ``annotations.tar.gz`` from the Oxford VGG page, extracted in
the folder, plus the split file from CoOp's DATASETS.md (Google Drive). About 800 MB,
7,349 images.
"""

from __future__ import annotations

import random
from typing import ClassVar

from fewshot.datasets.base import DatasetError
from fewshot.datasets.coop import CoopSplitDataset, Entries, read_lines, split_trainval

__all__ = ["OxfordPets"]


class OxfordPets(CoopSplitDataset):
    """Oxford-IIIT Pets in CoOp's layout (module docstring)."""

    name: ClassVar[str] = "oxford-pets"
    folder: ClassVar[str] = "oxford_pets"
    image_dir: ClassVar[str] = "images"
    split_name: ClassVar[str] = "OxfordPets"
    template: ClassVar[str] = "a photo of a {}, a type of pet."

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        trainval_file = self._need("annotations/trainval.txt")
        train, val = split_trainval(self._read_list("trainval.txt"), rng, trainval_file)
        return {"train": train, "val": val, "test": self._read_list("test.txt")}

    def _read_list(self, name: str) -> Entries:
        file = self._need(f"annotations/{name}")
        rows: Entries = []
        for line in read_lines(file, self.fix_hint()):
            if line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) < 2 or not parts[1].isdigit() or int(parts[1]) < 1:
                raise DatasetError(f"{file}: bad line {line!r} (want NAME CLASS ...); fix: {self.fix_hint()}")
            breed = "_".join(parts[0].split("_")[:-1]).lower()
            rows.append((f"{parts[0]}.jpg", int(parts[1]) - 1, breed))
        return rows
