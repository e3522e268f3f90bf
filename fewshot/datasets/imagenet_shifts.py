"""The four ImageNet distribution shifts used for domain generalisation (the protocol:
docs/methods.md#domain-generalisation).

Each is evaluation-only and reuses ImageNet's ``classnames.txt``: CoOp's DATASETS.md says to
copy ``$FEWSHOT_DATA/imagenet/classnames.txt`` into each folder; when the copy is missing,
ImageNet's own file is read instead. As in CoOp's readers (Dassl needs a train set), train, val
and test are all the whole dataset: train on ImageNet and evaluate here. Files within a class
are sorted by name. Template: ``a photo of a {}.`` (ImageNet's). ``domain_of = "imagenet"``.

- ImageNet-V2 (Recht et al., 2019), matched-frequency: ``imagenetv2/``, all 1,000 classes,
  folders named by label ``0`` .. ``999`` (label = the folder's number = the line of
  ``classnames.txt``); 10,000 images, about 1.2 GB. Download: the
  ``imagenetv2-matched-frequency.tar.gz`` release (ImageNetV2 page / Hugging Face hub).
- ImageNet-Sketch (Wang et al., 2019): ``imagenet-sketch/images/<wnid>/``, all 1,000 classes;
  50,889 images, about 8.4 GB. Download: the ImageNet-Sketch release (Google Drive, Kaggle or the
  Hugging Face hub).
- ImageNet-A (Hendrycks et al., 2021): ``imagenet-adversarial/imagenet-a/<wnid>/``, 200 classes;
  7,500 images, about 0.7 GB. Download: ``imagenet-a.tar`` (Berkeley).
- ImageNet-R (Hendrycks et al., 2021): ``imagenet-rendition/imagenet-r/<wnid>/``, 200 classes;
  30,000 images, about 2 GB. Download: ``imagenet-r.tar`` (Berkeley).

ImageNet-A and -R hold 200 of the 1,000 classes. Their labels follow the order of their wnids in
ImageNet's order (CoOp sorts the folders; ImageNet's wnids are sorted too), their class names
are ImageNet's, so their classifier is the 200-class subset of ImageNet's; ``imagenet_labels``
gives, per label, its ImageNet label id. Files that are not folders (``README.txt``) are skipped.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from fewshot.datasets.base import DatasetError
from fewshot.datasets.coop import CoopDataset, Loaded, clean_classname, image_names, subfolders
from fewshot.datasets.imagenet import (
    CLASSNAMES_FILE,
    ImageNet,
    eval_only_splits,
    read_classnames,
    wnid_folder_items,
)
from fewshot.types import Item

__all__ = ["ImageNetA", "ImageNetR", "ImageNetShift", "ImageNetSketch", "ImageNetSubset", "ImageNetV2"]

SPLIT_SOURCE = "test-only (train = val = test, as in CoOp)"


class ImageNetShift(CoopDataset):
    """An evaluation-only shift of ImageNet that uses ImageNet's class names."""

    domain_of: ClassVar[str | None] = "imagenet"
    eval_only: ClassVar[bool] = True
    template: ClassVar[str] = "a photo of a {}."

    def _sources(self) -> tuple[str, ...]:
        return (CLASSNAMES_FILE, f"../{ImageNet.folder}/{CLASSNAMES_FILE}", self.image_dir)

    def wnid_names(self) -> dict[str, str]:
        """ImageNet's wnid -> class name (uncleaned), in ImageNet's label order."""
        if not self.path.is_dir():
            raise DatasetError(f"{self.name}: dataset folder {self.path} not found; fix: {self.fix_hint()}")
        own = self.path / CLASSNAMES_FILE
        imagenet = self.path.parent / ImageNet.folder / CLASSNAMES_FILE
        fix = f"copy CoOp's {CLASSNAMES_FILE} (docs/datasets.md#imagenet) to {own}"
        if not own.is_file() and not imagenet.is_file():
            raise DatasetError(f"{self.name}: neither {own} nor {imagenet} exists; fix: {fix}")
        return read_classnames(own if own.is_file() else imagenet, fix)

    def _describe(self) -> tuple[tuple[str, ...], str]:
        return tuple(clean_classname(n) for n in self.wnid_names().values()), SPLIT_SOURCE


class ImageNetV2(ImageNetShift):
    """ImageNet-V2 matched-frequency: folders ``0`` .. ``999`` by label (module docstring)."""

    name: ClassVar[str] = "imagenet-v2"
    folder: ClassVar[str] = "imagenetv2"
    image_dir: ClassVar[str] = "imagenetv2-matched-frequency-format-val"

    def _read(self) -> Loaded:
        names = self.wnid_names()
        root = self._need(self.image_dir)
        missing = [str(label) for label in range(len(names)) if not (root / str(label)).is_dir()]
        if missing:
            raise DatasetError(
                f"{self.name}: {len(missing)} label folders are missing in {root} (e.g. {missing[:3]}); "
                f"fix: {self.fix_hint()}"
            )
        items = [
            Item(f"{self.image_dir}/{label}/{image}", label)
            for label in range(len(names))
            for image in image_names(root / str(label))
        ]
        classnames = tuple(clean_classname(n) for n in names.values())
        return Loaded(eval_only_splits(items, self.name, root, self.fix_hint()), classnames, SPLIT_SOURCE)


class ImageNetSketch(ImageNetShift):
    """ImageNet-Sketch: one folder per ImageNet wnid (module docstring)."""

    name: ClassVar[str] = "imagenet-sketch"
    folder: ClassVar[str] = "imagenet-sketch"
    image_dir: ClassVar[str] = "images"

    def _read(self) -> Loaded:
        names = self.wnid_names()
        root = self._need(self.image_dir)
        items = wnid_folder_items(root, self.image_dir, list(names), self.name, self.fix_hint())
        classnames = tuple(clean_classname(n) for n in names.values())
        return Loaded(eval_only_splits(items, self.name, root, self.fix_hint()), classnames, SPLIT_SOURCE)


class ImageNetSubset(ImageNetShift):
    """A shift over a subset of ImageNet's classes: its wnid folders, in ImageNet's order."""

    def wnids(self) -> list[str]:
        """The dataset's wnids in label order (sorted, which is ImageNet's order)."""
        names = self.wnid_names()
        folders = subfolders(self._need(self.image_dir))
        unknown = [f for f in folders if f not in names]
        if unknown or not folders:
            raise DatasetError(
                f"{self.name}: {self.path / self.image_dir} holds {len(folders)} class folders, "
                f"{len(unknown)} of them not ImageNet wnids (e.g. {unknown[:3]}); fix: {self.fix_hint()}"
            )
        return folders

    @property
    def imagenet_labels(self) -> tuple[int, ...]:
        """For each label of this dataset, its label id in ImageNet (``imagenet`` dataset)."""
        index = {wnid: label for label, wnid in enumerate(self.wnid_names())}
        return tuple(index[wnid] for wnid in self.wnids())

    def _describe(self) -> tuple[tuple[str, ...], str]:
        names = self.wnid_names()
        return tuple(clean_classname(names[w]) for w in self.wnids()), SPLIT_SOURCE

    def _read(self) -> Loaded:
        names, wnids = self.wnid_names(), self.wnids()
        root: Path = self.path / self.image_dir
        items = wnid_folder_items(root, self.image_dir, wnids, self.name, self.fix_hint())
        classnames = tuple(clean_classname(names[w]) for w in wnids)
        return Loaded(eval_only_splits(items, self.name, root, self.fix_hint()), classnames, SPLIT_SOURCE)


class ImageNetA(ImageNetSubset):
    """ImageNet-A: natural adversarial examples of 200 ImageNet classes (module docstring)."""

    name: ClassVar[str] = "imagenet-a"
    folder: ClassVar[str] = "imagenet-adversarial"
    image_dir: ClassVar[str] = "imagenet-a"


class ImageNetR(ImageNetSubset):
    """ImageNet-R: renditions (art, cartoons, ...) of 200 ImageNet classes (module docstring)."""

    name: ClassVar[str] = "imagenet-r"
    folder: ClassVar[str] = "imagenet-rendition"
    image_dir: ClassVar[str] = "imagenet-r"
