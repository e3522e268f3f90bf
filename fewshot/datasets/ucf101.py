"""UCF101 (Soomro, Zamir and Shah, 2012): 101 human actions, one middle frame per video.

Folder ``$FEWSHOT_DATA/ucf101/``, as CoOp's DATASETS.md lays it out::

    ucf101/
      UCF-101-midframes/Apply_Eye_Makeup/v_ApplyEyeMakeup_g01_c01.jpg ...
      split_zhou_UCF101.json
      ucfTrainTestlist/classInd.txt  trainlist01.txt  testlist01.txt   (only to generate a split)

Class names: from the split file: the action name split at capitals and joined with ``_``
(``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup``), then ``_`` -> space.

Template: ``a photo of a person doing {}.``

Splits: CoOp's ``split_zhou_UCF101.json`` (101 classes; 7,639 / 1,898 / 3,783 images);
without it, the official ``testlist01.txt`` is the test split and ``trainlist01.txt`` is split
80/20 per class (:mod:`fewshot.datasets.coop`); labels follow ``classInd.txt``.

Download: manual, because Google Drive does not serve large files to scripts:
``UCF-101-midframes.zip`` (CoOp's extracted middle frames) and the split file, both from CoOp's
DATASETS.md (Google Drive); ``ucfTrainTestlist`` from the UCF101 page. 13,320 frames.
"""

from __future__ import annotations

import random
import re
from typing import ClassVar

from fewshot.datasets.base import DatasetError
from fewshot.datasets.coop import CoopSplitDataset, Entries, read_lines, split_trainval

__all__ = ["UCF101"]

_WORD = re.compile(r"[A-Z][^A-Z]*")


def ucf_classname(action: str) -> str:
    """CoOp's folder and class name of an action: ``ApplyEyeMakeup`` -> ``Apply_Eye_Makeup``."""
    return "_".join(_WORD.findall(action))


class UCF101(CoopSplitDataset):
    """UCF101 middle frames in CoOp's layout (module docstring)."""

    name: ClassVar[str] = "ucf101"
    folder: ClassVar[str] = "ucf101"
    image_dir: ClassVar[str] = "UCF-101-midframes"
    split_name: ClassVar[str] = "UCF101"
    template: ClassVar[str] = "a photo of a person doing {}."
    download: ClassVar[str] = "manual"
    manual: ClassVar[str] = (
        "download CoOp's UCF-101-midframes.zip from Google Drive in a browser (or with gdown), unzip it "
        "in ucf101/ and add CoOp's split_zhou_UCF101.json"
    )

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        cname2lab: dict[str, int] = {}
        index = self._need("ucfTrainTestlist/classInd.txt")
        for line in read_lines(index, self.fix_hint()):
            number, _, action = line.partition(" ")
            if not number.isdigit() or not action:
                raise DatasetError(f"{self.name}: {index}: bad line {line!r}; fix: {self.fix_hint()}")
            cname2lab[action.strip()] = int(number) - 1
        trainlist = "ucfTrainTestlist/trainlist01.txt"
        train, val = split_trainval(self._read_list(trainlist, cname2lab), rng, self.path / trainlist)
        return {
            "train": train,
            "val": val,
            "test": self._read_list("ucfTrainTestlist/testlist01.txt", cname2lab),
        }

    def _read_list(self, name: str, cname2lab: dict[str, int]) -> Entries:
        file = self._need(name)
        rows: Entries = []
        for line in read_lines(file, self.fix_hint()):
            action, _, filename = line.split(" ")[0].partition("/")
            if action not in cname2lab or not filename:
                raise DatasetError(
                    f"{self.name}: {file}: {line!r} names no class of classInd.txt; fix: {self.fix_hint()}"
                )
            renamed = ucf_classname(action)
            rows.append((f"{renamed}/{filename.replace('.avi', '.jpg')}", cname2lab[action], renamed))
        return rows
