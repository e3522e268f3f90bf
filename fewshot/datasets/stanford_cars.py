"""Stanford Cars (Krause et al., 2013): 196 car models (make, model, year).

Folder ``$FEWSHOT_DATA/stanford_cars/``, as CoOp's DATASETS.md lays it out::

    stanford_cars/
      cars_train/00001.jpg ...
      cars_test/00001.jpg ...
      devkit/cars_meta.mat  devkit/cars_train_annos.mat  ...
      cars_test_annos_withlabels.mat
      split_zhou_StanfordCars.json

The split file's paths are relative to the dataset folder itself (``cars_train/00001.jpg``).

Class names: from the split file; CoOp moved the year to the front ("2012 Tesla Model S").
``_`` -> space.

Template: ``a photo of a {}.``

Splits: CoOp's ``split_zhou_StanfordCars.json`` (196 classes; 6,509 / 1,635 / 8,041 images);
without it (the .mat annotations, read with scipy), the official test annotations are the
test split and the train annotations are split 80/20 per class (:mod:`fewshot.datasets.coop`).

Download: manual. Stanford's original links are dead; the same files circulate as mirrors
(e.g. on Kaggle), and the split file is on CoOp's DATASETS.md (Google Drive). About 1.9 GB,
16,185 images.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import ClassVar

from fewshot.datasets.base import DatasetError
from fewshot.datasets.coop import CoopSplitDataset, Entries, read_mat, split_trainval

__all__ = ["StanfordCars"]


class StanfordCars(CoopSplitDataset):
    """Stanford Cars in CoOp's layout (module docstring)."""

    name: ClassVar[str] = "stanford-cars"
    folder: ClassVar[str] = "stanford_cars"
    image_dir: ClassVar[str] = ""
    marker: ClassVar[str | None] = "cars_test"
    link_dirs: ClassVar[tuple[str, ...]] = ("cars_train", "cars_test")
    split_name: ClassVar[str] = "StanfordCars"
    template: ClassVar[str] = "a photo of a {}."
    download: ClassVar[str] = "manual"
    manual: ClassVar[str] = (
        "Stanford's links are dead; put cars_train/, cars_test/, devkit/, cars_test_annos_withlabels.mat "
        "from a copy and CoOp's split_zhou_StanfordCars.json in stanford_cars/"
    )

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        meta = self._need("devkit/cars_meta.mat")
        trainval = self._read_mat("cars_train", "devkit/cars_train_annos.mat", meta)
        train, val = split_trainval(trainval, rng, self.path / "devkit/cars_train_annos.mat")
        test = self._read_mat("cars_test", "cars_test_annos_withlabels.mat", meta)
        return {"train": train, "val": val, "test": test}

    def _read_mat(self, image_dir: str, annotations: str, meta: Path) -> Entries:
        file = self._need(annotations)
        names = read_mat(meta, "class_names", self.fix_hint())[0]
        annos = read_mat(file, "annotations", self.fix_hint())[0]
        try:
            rows: Entries = []
            for anno in annos:
                label = int(anno["class"][0, 0]) - 1
                words = str(names[label][0]).split(" ")
                words.insert(0, words.pop())  # the year goes first, as CoOp names the classes
                rows.append((f"{image_dir}/{anno['fname'][0]}", label, " ".join(words)))
        except (ValueError, KeyError, IndexError, TypeError) as exc:
            raise DatasetError(
                f"{self.name}: unexpected contents in {file} or {meta} ({exc}); fix: {self.fix_hint()}"
            ) from None
        return rows
