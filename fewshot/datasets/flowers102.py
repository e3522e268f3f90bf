"""Oxford Flowers 102 (Nilsback and Zisserman, 2008): 102 flower species.

Folder ``$FEWSHOT_DATA/oxford_flowers/``, as CoOp's DATASETS.md lays it out::

    oxford_flowers/
      jpg/image_00001.jpg ... image_08189.jpg
      imagelabels.mat
      cat_to_name.json
      split_zhou_OxfordFlowers.json

Class names: from the split file (CoOp took them from ``cat_to_name.json``, e.g.
"pink primrose"). ``_`` -> space.

Template: ``a photo of a {}, a type of flower.``

Splits: CoOp's ``split_zhou_OxfordFlowers.json`` (102 classes; 4,093 / 1,633 / 2,463 images);
without it (this reads ``imagelabels.mat`` with scipy, and needs CoOp's ``cat_to_name.json``),
images are grouped by label in order of first appearance in ``imagelabels.mat`` and split
50/20/30 per class (:mod:`fewshot.datasets.coop`).

Download: ``102flowers.tgz`` and ``imagelabels.mat`` from the Oxford VGG page, plus
``cat_to_name.json`` and the split file from CoOp's DATASETS.md (Google Drive). About 330 MB,
8,189 images.
"""

from __future__ import annotations

import json
import random
from typing import ClassVar

from fewshot.datasets.base import DatasetError
from fewshot.datasets.coop import SPLIT_NAMES, CoopSplitDataset, Entries, read_mat, split_50_20_30

__all__ = ["Flowers102"]


class Flowers102(CoopSplitDataset):
    """Oxford Flowers 102 in CoOp's layout (module docstring)."""

    name: ClassVar[str] = "flowers102"
    folder: ClassVar[str] = "oxford_flowers"
    image_dir: ClassVar[str] = "jpg"
    split_name: ClassVar[str] = "OxfordFlowers"
    template: ClassVar[str] = "a photo of a {}, a type of flower."

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        names_file = self._need("cat_to_name.json")
        labels = self._read_labels()
        try:
            lab2cname = {int(k): str(v) for k, v in json.loads(names_file.read_bytes()).items()}
        except (OSError, ValueError, AttributeError) as exc:
            raise DatasetError(
                f"{self.name}: cannot read {names_file} ({exc}); fix: {self.fix_hint()}"
            ) from None
        groups: dict[int, Entries] = {}
        for i, label in enumerate(labels):
            if label not in lab2cname:
                raise DatasetError(
                    f"{self.name}: label {label} has no name in {names_file}; fix: {self.fix_hint()}"
                )
            groups.setdefault(label, []).append((f"image_{i + 1:05d}.jpg", label - 1, lab2cname[label]))
        out: dict[str, Entries] = {name: [] for name in SPLIT_NAMES}
        for rows in groups.values():
            for name, part in zip(
                SPLIT_NAMES, split_50_20_30(rows, rng, self.path / "imagelabels.mat"), strict=True
            ):
                out[name] += part
        return out

    def _read_labels(self) -> list[int]:
        file = self._need("imagelabels.mat")
        labels = read_mat(file, "labels", self.fix_hint())
        try:
            return [int(label) for label in labels[0]]
        except (ValueError, IndexError, TypeError) as exc:
            raise DatasetError(f"{self.name}: bad labels in {file} ({exc}); fix: {self.fix_hint()}") from None
