"""EuroSAT (Helber et al., 2019): 10 land-use classes of Sentinel-2 RGB satellite images.

Folder ``$FEWSHOT_DATA/eurosat/`` (``EuroSAT.zip`` extracted into it, as CoOp's DATASETS.md
lays it out)::

    eurosat/
      2750/<Class>/<Class>_1.jpg
      split_zhou_EuroSAT.json

Class names: from the split file. CoOp renamed the folder names to phrases (``AnnualCrop`` ->
"Annual Crop Land", ``Highway`` -> "Highway or Road", ``SeaLake`` -> "Sea or Lake", ...);
a generated split uses the same names (:data:`NEW_CLASSNAMES`). ``_`` -> space.

Template: ``a centered satellite photo of {}.``

Splits: CoOp's ``split_zhou_EuroSAT.json`` (10 classes; 13,500 / 5,400 / 8,100 images);
without it, 50/20/30 per class folder (:mod:`fewshot.datasets.coop`).

Download: ``EuroSAT.zip`` (the RGB version; DFKI's original link, mirrored on the Hugging Face
hub), extracted in the folder, plus the split file from CoOp's DATASETS.md (Google Drive).
About 90 MB, 27,000 images of 64x64 pixels.
"""

from __future__ import annotations

import random
from typing import ClassVar

from fewshot.datasets.coop import CoopSplitDataset, Entries, split_folders

__all__ = ["NEW_CLASSNAMES", "EuroSAT"]

NEW_CLASSNAMES = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


class EuroSAT(CoopSplitDataset):
    """EuroSAT in CoOp's layout (module docstring)."""

    name: ClassVar[str] = "eurosat"
    folder: ClassVar[str] = "eurosat"
    image_dir: ClassVar[str] = "2750"
    split_name: ClassVar[str] = "EuroSAT"
    template: ClassVar[str] = "a centered satellite photo of {}."

    def _generate_items(self, rng: random.Random) -> dict[str, Entries]:
        return split_folders(self._need(self.image_dir), rng, renames=NEW_CLASSNAMES)
