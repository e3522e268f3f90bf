"""CUB-200-2011 (Wah et al., 2011): 200 bird species.

Folder ``$FEWSHOT_DATA/cub/``, holding the extracted ``CUB_200_2011.tgz`` as ProAPO expects it
(MorningStarOvO/ProAPO runs with ``--data_root data/CUB2002011`` and paths
``CUB_200_2011/images/...``)::

    cub/
      CUB_200_2011/
        images/001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg ...
        images.txt  image_class_labels.txt  train_test_split.txt  classes.txt
      split_generated_CUB.json      (written on first use)

Class names: ``classes.txt`` without the number prefix, ``_`` -> space
(``001.Black_footed_Albatross`` -> "Black footed Albatross"). ProAPO's and DCLIP's description
files use hand-edited names ("Black-footed Albatross"); the descriptions loader matches them.

Template: ``a photo of a {}.``, the baseline template of ProAPO
(``data/prompt_template_task_specific/clip.json``) and CLIP's default.

Splits: CoOp publishes none, so the split is always generated
(:mod:`fewshot.datasets.coop`): the official ``train_test_split.txt`` test images (5,794) are
the test split; the official train images (5,994) are split 80/20 per class into train and val.
Images keep the order of ``images.txt``.

Download: ``CUB_200_2011.tgz`` from Caltech's data repository (CaltechDATA), extracted in the
folder. About 1.1 GB, 11,788 images.
"""

from __future__ import annotations

import random
from typing import ClassVar

from fewshot.datasets.base import DatasetError
from fewshot.datasets.coop import CoopSplitDataset, Entries, read_lines, split_trainval

__all__ = ["CUB"]

BASE = "CUB_200_2011"


class CUB(CoopSplitDataset):
    """CUB-200-2011 with a generated train/val split of the official train set."""

    name: ClassVar[str] = "cub"
    folder: ClassVar[str] = "cub"
    image_dir: ClassVar[str] = f"{BASE}/images"
    link_dirs: ClassVar[tuple[str, ...]] = (BASE,)
    split_name: ClassVar[str] = "CUB"
    coop_split: ClassVar[bool] = False
    template: ClassVar[str] = "a photo of a {}."

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        classes = self._id_map("classes.txt")
        labels = self._id_map("image_class_labels.txt")
        is_train = self._id_map("train_test_split.txt")
        train: Entries = []
        test: Entries = []
        for image_id, impath in self._id_map("images.txt").items():
            class_id = labels.get(image_id, "")
            if class_id not in classes or is_train.get(image_id) not in ("0", "1") or not class_id.isdigit():
                raise DatasetError(
                    f"{self.name}: image {image_id} ({impath}) has no class or train/test flag in "
                    f"{self.path / BASE}; fix: re-extract CUB_200_2011.tgz ({self.fix_hint()})"
                )
            row = (impath, int(class_id) - 1, classes[class_id].partition(".")[2])
            (train if is_train[image_id] == "1" else test).append(row)
        train, val = split_trainval(train, rng, self.path / BASE / "train_test_split.txt")
        return {"train": train, "val": val, "test": test}

    def _id_map(self, name: str) -> dict[str, str]:
        """``ID VALUE`` lines of a CUB metadata file, in file order."""
        file = self._need(f"{BASE}/{name}")
        out: dict[str, str] = {}
        for line in read_lines(file, self.fix_hint()):
            key, _, value = line.partition(" ")
            if not value:
                raise DatasetError(
                    f"{self.name}: {file}: bad line {line!r} (want ID VALUE); fix: {self.fix_hint()}"
                )
            out[key] = value.strip()
        return out
