"""SUN397 (Xiao et al., 2010): 397 scene categories.

Folder ``$FEWSHOT_DATA/sun397/``, as CoOp's DATASETS.md lays it out (``SUN397.tar.gz`` and
``Partitions.zip`` extracted into it)::

    sun397/
      SUN397/a/abbey/sun_aaalbzqrimafwbiv.jpg  ...  SUN397/a/apartment_building/outdoor/...
      ClassName.txt  Training_01.txt  Testing_01.txt  ...
      split_zhou_SUN397.json

Class names: from the split file. CoOp drops the initial-letter folder and reverses the rest,
so ``/a/apartment_building/outdoor`` is "outdoor apartment_building"; ``_`` -> space.

Template: ``a photo of a {}.``

Splits: CoOp's ``split_zhou_SUN397.json`` (397 classes; 15,880 / 3,970 / 19,850 images);
without it, the official partition 01 (``Testing_01.txt``) is the test split and
``Training_01.txt`` is split 80/20 per class (:mod:`fewshot.datasets.coop`); labels follow
``ClassName.txt``.

Download: ``SUN397.tar.gz`` and ``Partitions.zip`` from the Princeton SUN page, plus the split
file from CoOp's DATASETS.md (Google Drive). About 39 GB, 108,754 images.
"""

from __future__ import annotations

import posixpath
import random
from typing import ClassVar

from fewshot.datasets.base import DatasetError
from fewshot.datasets.coop import CoopSplitDataset, Entries, read_lines, split_trainval

__all__ = ["SUN397"]


def sun_classname(folder: str) -> str:
    """CoOp's class name of a SUN397 folder: ``a/apartment_building/outdoor`` ->
    ``outdoor apartment_building``."""
    return " ".join(folder.split("/")[1:][::-1])


class SUN397(CoopSplitDataset):
    """SUN397 in CoOp's layout (module docstring)."""

    name: ClassVar[str] = "sun397"
    folder: ClassVar[str] = "sun397"
    image_dir: ClassVar[str] = "SUN397"
    split_name: ClassVar[str] = "SUN397"
    template: ClassVar[str] = "a photo of a {}."

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        classes = [line[1:] for line in read_lines(self._need("ClassName.txt"), self.fix_hint())]
        cname2lab = {c: i for i, c in enumerate(classes)}
        train, val = split_trainval(
            self._read_list("Training_01.txt", cname2lab), rng, self.path / "Training_01.txt"
        )
        return {"train": train, "val": val, "test": self._read_list("Testing_01.txt", cname2lab)}

    def _read_list(self, name: str, cname2lab: dict[str, int]) -> Entries:
        file = self._need(name)
        rows: Entries = []
        for line in read_lines(file, self.fix_hint()):
            impath = line[1:]  # drop the leading "/"
            folder = posixpath.dirname(impath)
            if folder not in cname2lab:
                raise DatasetError(
                    f"{self.name}: {file}: {line!r} is in no class of ClassName.txt; fix: {self.fix_hint()}"
                )
            rows.append((impath, cname2lab[folder], sun_classname(folder)))
        return rows
