"""ImageNet (ILSVRC-2012; Deng et al., 2009; Russakovsky et al., 2015): 1,000 classes.

Folder ``$FEWSHOT_DATA/imagenet/``, as CoOp's DATASETS.md lays it out::

    imagenet/
      classnames.txt                       n01440764 tench   (one "wnid name" per line)
      images/train/n01440764/n01440764_10026.JPEG ...   (1,000 wnid folders)
      images/val/n01440764/ILSVRC2012_val_00000293.JPEG ...   (the same 1,000 folders)

``images/train`` and ``images/val`` may be symlinks to an existing copy, as CoOp suggests.

Class names: ``classnames.txt`` (CoOp's file; the names are CLIP's), ``_`` -> space. The file
must list the wnids in sorted order, as CoOp's does: labels are positions in that order, the
order of CoOp's sorted class folders, so that ImageNet and its shifts share one label order.

Template: ``a photo of a {}.``

Splits: read from the folders as CoOp reads them (no split file): train = ``images/train``,
test = the official validation set ``images/val`` (50,000 images). ImageNet has no val split
of its own: CoOp uses val = test; here ``Splits.val`` is the train split, so the few-shot val
set is drawn from the train images outside the support set and no method can select
anything on test images (a deliberate deviation; docs/design.md says what it changes).
Within a class, files are sorted by name (CoOp keeps the file system's order, which differs
between machines).

The validation images must be sorted into wnid folders. The official archive extracts them flat
(``images/val/ILSVRC2012_val_00000001.JPEG``); that is an error naming the folder and the fix
(docs/datasets.md#imagenet), never an empty test split. :func:`sort_val_images`
(``fewshot data sort-imagenet-val``) sorts them with the devkit's labels.

Download: manual (image-net.org requires a login): ``ILSVRC2012_img_train.tar`` and
``ILSVRC2012_img_val.tar``, extracted to ``images/train/<wnid>/`` and ``images/val/<wnid>/``,
and ``classnames.txt`` from CoOp's DATASETS.md (Google Drive). About 147 GB; 1,281,167 train
and 50,000 val images.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import ClassVar

from fewshot.datasets.base import DatasetError
from fewshot.datasets.coop import CoopDataset, Loaded, clean_classname, image_names, read_lines, subfolders
from fewshot.types import Item, Split, Splits

__all__ = [
    "CLASSNAMES_FILE",
    "DEVKIT",
    "ImageNet",
    "eval_only_splits",
    "read_classnames",
    "sort_val_images",
    "wnid_folder_items",
]

DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"

CLASSNAMES_FILE = "classnames.txt"
SPLIT_SOURCE = "images/{train,val} folders"


def read_classnames(file: Path, fix: str) -> dict[str, str]:
    """wnid -> class name from CoOp's ``classnames.txt``, in file order (which must be sorted)."""
    names: dict[str, str] = {}
    for line in read_lines(file, fix):
        wnid, _, name = line.partition(" ")
        if not name or wnid in names:
            raise DatasetError(f"{file}: bad or repeated line {line!r} (want 'wnid name'); fix: {fix}")
        names[wnid] = name
    if list(names) != sorted(names):
        raise DatasetError(
            f"{file} does not list the wnids in sorted order as CoOp's file does, so its labels would "
            f"disagree with CoOp's and between ImageNet and its shifts; fix: {fix}"
        )
    return names


def wnid_folder_items(root: Path, relative: str, wnids: list[str], name: str, fix: str) -> list[Item]:
    """Items of ``root`` (``relative`` to the dataset folder) whose class folders are ``wnids``.

    Label = position in ``wnids``. Every folder must be one of ``wnids`` and every wnid must
    have a folder; images lying directly in ``root`` mean the folder is not sorted.
    """
    loose = image_names(root)
    folders = subfolders(root)
    if loose:
        raise DatasetError(
            f"{name}: {len(loose)} images lie directly in {root} (e.g. {loose[0]}) instead of in class "
            f"folders <wnid>/, so they would belong to no class; fix: {fix}"
        )
    index = {wnid: label for label, wnid in enumerate(wnids)}
    unknown = [f for f in folders if f not in index]
    missing = sorted(set(wnids) - set(folders))
    if unknown or missing:
        raise DatasetError(
            f"{name}: the class folders of {root} do not match {CLASSNAMES_FILE}: "
            f"{len(missing)} missing (e.g. {missing[:3]}), {len(unknown)} unknown (e.g. {unknown[:3]}); "
            f"fix: {fix}"
        )
    return [
        Item(f"{relative}/{wnid}/{image}", label)
        for label, wnid in enumerate(wnids)
        for image in image_names(root / wnid)
    ]


def eval_only_splits(items: list[Item], name: str, root: Path, fix: str) -> Splits:
    """train = val = test = ``items``, as Dassl's readers of evaluation-only datasets do."""
    if not items:
        raise DatasetError(f"{name}: no images under {root}; fix: {fix}")
    return Splits(Split("train", tuple(items)), Split("val", tuple(items)), Split("test", tuple(items)))


class ImageNet(CoopDataset):
    """ImageNet in CoOp's layout, read from the class folders (module docstring)."""

    name: ClassVar[str] = "imagenet"
    folder: ClassVar[str] = "imagenet"
    image_dir: ClassVar[str] = "images"
    marker: ClassVar[str | None] = "images/train"
    link_dirs: ClassVar[tuple[str, ...]] = ("images/train", "images/val")
    template: ClassVar[str] = "a photo of a {}."
    download: ClassVar[str] = "manual"
    manual: ClassVar[str] = (
        "from image-net.org (login), extract train and val into imagenet/images/{train,val}/<wnid>/ "
        "and add CoOp's classnames.txt"
    )

    def _sources(self) -> tuple[str, ...]:
        return (CLASSNAMES_FILE, "images/train", "images/val")

    def wnid_names(self) -> dict[str, str]:
        """wnid -> class name (uncleaned) of the 1,000 classes, in label order."""
        if not self.path.is_dir():
            raise DatasetError(f"{self.name}: dataset folder {self.path} not found; fix: {self.fix_hint()}")
        return read_classnames(self._need(CLASSNAMES_FILE), self.fix_hint())

    def _describe(self) -> tuple[tuple[str, ...], str]:
        return tuple(clean_classname(n) for n in self.wnid_names().values()), SPLIT_SOURCE

    def _read(self) -> Loaded:
        names = self.wnid_names()
        wnids = list(names)
        train_root, val_root = self._need("images/train"), self._need("images/val")
        train = wnid_folder_items(train_root, "images/train", wnids, self.name, self.fix_hint())
        if not subfolders(val_root) and image_names(val_root):
            raise DatasetError(self._unsorted_val(val_root))
        test = wnid_folder_items(val_root, "images/val", wnids, self.name, self._sort_hint(val_root))
        for split, items, root in (("train", train, train_root), ("test", test, val_root)):
            if not items:
                raise DatasetError(
                    f"{self.name}: the {split} split is empty: no images in {root}; fix: {self.fix_hint()}"
                )
        # No val split: val is the train split, sampled outside the support (fewshot.protocols).
        splits = Splits(Split("train", tuple(train)), Split("val", tuple(train)), Split("test", tuple(test)))
        return Loaded(splits, tuple(clean_classname(n) for n in names.values()), SPLIT_SOURCE)

    def _unsorted_val(self, val_root: Path) -> str:
        n = len(image_names(val_root))
        return (
            f"{self.name}: the validation images in {val_root} are not sorted into class folders "
            f"({n} images lie directly in it), so the test split would be empty; "
            f"fix: {self._sort_hint(val_root)}"
        )

    def _sort_hint(self, val_root: Path) -> str:
        return (
            f"put {DEVKIT} (image-net.org) in {val_root.parent} and run `fewshot data sort-imagenet-val`, "
            f"which moves each image into {val_root}/<wnid>/; see docs/datasets.md#imagenet"
        )


def sort_val_images(images_dir: Path) -> tuple[int, int]:
    """Move the official validation images, extracted flat into ``images_dir/val``, into
    ``images_dir/val/<wnid>/``; return (images moved, images left flat).

    The label of ``ILSVRC2012_val_<i>.JPEG`` is the devkit's i-th ground-truth entry, read
    through torchvision (installed with fewshot): from ``images_dir/meta.bin`` when
    torchvision has made it, otherwise parsed from ``images_dir/ILSVRC2012_devkit_t12.tar.gz``
    (md5-checked by torchvision). Images already in their folders stay, so a rerun after an
    interruption sorts the rest. Files that are not official val images are left alone.
    """
    from torchvision.datasets.imagenet import META_FILE, load_meta_file, parse_devkit_archive

    val = images_dir / "val"
    if not val.is_dir():
        raise DatasetError(f"No folder {val}: extract ILSVRC2012_img_val.tar there first.")
    if not (images_dir / META_FILE).is_file():
        if not (images_dir / DEVKIT).is_file():
            raise DatasetError(
                f"The val labels come from the devkit: put {DEVKIT} (image-net.org, with the val tar) "
                f"in {images_dir} and run the command again."
            )
        try:
            parse_devkit_archive(str(images_dir))
        except (OSError, RuntimeError, KeyError, ValueError) as exc:
            raise DatasetError(f"Cannot read {images_dir / DEVKIT} ({exc}); download it again.") from None
    try:
        _, wnids = load_meta_file(str(images_dir))
    except (OSError, RuntimeError, ValueError) as exc:
        raise DatasetError(f"Cannot read {images_dir / META_FILE} ({exc}); delete it and rerun.") from None
    moved = 0
    for index, wnid in enumerate(wnids, start=1):
        name = f"ILSVRC2012_val_{index:08d}.JPEG"
        if (val / name).is_file():
            (val / wnid).mkdir(exist_ok=True)
            os.replace(val / name, val / wnid / name)
            moved += 1
    return moved, len(image_names(val))
