"""DTD, the Describable Textures Dataset (Cimpoi et al., 2014): 47 texture classes.

Folder ``$FEWSHOT_DATA/dtd/`` (the extracted ``dtd-r1.0.1.tar.gz``, as CoOp's DATASETS.md
lays it out)::

    dtd/
      images/<texture>/<texture>_0001.jpg
      imdb/  labels/
      split_zhou_DescribableTextures.json

Class names: from the split file (the folder names, e.g. ``banded``), ``_`` -> space.

Template: ``{} texture.``

Splits: CoOp's ``split_zhou_DescribableTextures.json`` (47 classes; 2,820 / 1,128 / 1,692
images); without it, 50/20/30 per texture folder (:mod:`fewshot.datasets.coop`).

Download: ``dtd-r1.0.1.tar.gz`` from the Oxford VGG page, extracted in the data root, plus the
split file from CoOp's DATASETS.md (Google Drive). About 600 MB, 5,640 images.
"""

from __future__ import annotations

import random
from typing import ClassVar

from fewshot.datasets.coop import CoopSplitDataset, Entries, split_folders

__all__ = ["DTD"]


class DTD(CoopSplitDataset):
    """DTD in CoOp's layout (module docstring)."""

    name: ClassVar[str] = "dtd"
    folder: ClassVar[str] = "dtd"
    image_dir: ClassVar[str] = "images"
    split_name: ClassVar[str] = "DescribableTextures"
    template: ClassVar[str] = "{} texture."

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        return split_folders(self._need(self.image_dir), rng)
