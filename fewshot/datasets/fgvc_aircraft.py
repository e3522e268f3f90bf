"""FGVC-Aircraft (Maji et al., 2013): 100 aircraft model variants.

Folder ``$FEWSHOT_DATA/fgvc_aircraft/``: the ``data/`` folder of
``fgvc-aircraft-2013b.tar.gz``, renamed, as CoOp's DATASETS.md lays it out::

    fgvc_aircraft/
      images/0034309.jpg ...
      variants.txt
      images_variant_train.txt  images_variant_val.txt  images_variant_test.txt
      ...  (the other .txt files of the archive)

Class names: the lines of ``variants.txt``, in that order (label = line number from 0), e.g.
"707-320"; ``_`` -> space.

Template: ``a photo of a {}, a type of aircraft.``

Splits: the official ones, read as CoOp reads them: ``images_variant_{train,val,test}.txt``,
one ``IMAGE_ID VARIANT`` per line (100 classes; 3,334 / 3,333 / 3,333 images). No split file.

Download: ``fgvc-aircraft-2013b.tar.gz`` from the Oxford VGG page; keep ``data/`` as the
folder. About 2.7 GB, 10,000 images.
"""

from __future__ import annotations

from typing import ClassVar

from fewshot.datasets.base import DatasetError
from fewshot.datasets.coop import SPLIT_NAMES, CoopDataset, Entries, Loaded, read_lines

__all__ = ["FGVCAircraft"]

LIST_FILES = tuple(f"images_variant_{name}.txt" for name in SPLIT_NAMES)


class FGVCAircraft(CoopDataset):
    """FGVC-Aircraft variants, read from the official lists (module docstring)."""

    name: ClassVar[str] = "fgvc-aircraft"
    folder: ClassVar[str] = "fgvc_aircraft"
    image_dir: ClassVar[str] = "images"
    template: ClassVar[str] = "a photo of a {}, a type of aircraft."
    split_source: ClassVar[str] = "images_variant_{train,val,test}.txt"

    def _sources(self) -> tuple[str, ...]:
        return ("variants.txt", *LIST_FILES)

    def _read(self) -> Loaded:
        variants = read_lines(self._need("variants.txt"), self.fix_hint())
        cname2lab = {c: i for i, c in enumerate(variants)}
        rows = {
            name: self._read_list(file, cname2lab) for name, file in zip(SPLIT_NAMES, LIST_FILES, strict=True)
        }
        return self._build(rows, self.split_source, self.path / "images_variant_*.txt")

    def _read_list(self, name: str, cname2lab: dict[str, int]) -> Entries:
        file = self._need(name)
        rows: Entries = []
        for line in read_lines(file, self.fix_hint()):
            image_id, _, variant = line.partition(" ")
            if variant not in cname2lab:
                raise DatasetError(
                    f"{self.name}: {file}: {line!r} names no variant of variants.txt; fix: {self.fix_hint()}"
                )
            rows.append((f"{image_id}.jpg", cname2lab[variant], variant))
        if not rows:
            raise DatasetError(f"{self.name}: {file} lists no images; fix: {self.fix_hint()}")
        return rows
