"""Datasets and suites, registered lazily.

Datasets live inside the package (not in a top-level ``datasets/``) because an installed
top-level package called ``datasets`` would shadow Hugging Face ``datasets``.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

from fewshot.registry import Registry
from fewshot.types import ConfigError

if TYPE_CHECKING:
    from fewshot.datasets.base import Dataset

__all__ = ["COOP11", "DATASETS", "SUITES", "get_dataset", "list_datasets", "resolve_datasets"]


class _DatasetRegistry(Registry["type[Dataset]"]):
    def _check(self, name: str, obj: object) -> type[Dataset]:
        from fewshot.datasets.base import Dataset

        self.base = Dataset
        return super()._check(name, obj)


DATASETS = _DatasetRegistry("dataset")

# Toy datasets: procedural, need no data root (fewshot/toyworld).
DATASETS.register("toy-shapes", "fewshot.datasets.toy:ToyShapes")
DATASETS.register("toy-colors", "fewshot.datasets.toy:ToyColors")
DATASETS.register("toy-textures", "fewshot.datasets.toy:ToyTextures")
DATASETS.register("toy-objects", "fewshot.datasets.toy:ToyObjects")
DATASETS.register("toy-shapes-sketch", "fewshot.datasets.toy:ToyShapesSketch")

# The standard datasets, read from $FEWSHOT_DATA in CoOp's layout (docs/datasets.md).
DATASETS.register("imagenet", "fewshot.datasets.imagenet:ImageNet")
DATASETS.register("caltech101", "fewshot.datasets.caltech101:Caltech101")
DATASETS.register("oxford-pets", "fewshot.datasets.oxford_pets:OxfordPets")
DATASETS.register("stanford-cars", "fewshot.datasets.stanford_cars:StanfordCars")
DATASETS.register("flowers102", "fewshot.datasets.flowers102:Flowers102")
DATASETS.register("food101", "fewshot.datasets.food101:Food101")
DATASETS.register("fgvc-aircraft", "fewshot.datasets.fgvc_aircraft:FGVCAircraft")
DATASETS.register("sun397", "fewshot.datasets.sun397:SUN397")
DATASETS.register("dtd", "fewshot.datasets.dtd:DTD")
DATASETS.register("eurosat", "fewshot.datasets.eurosat:EuroSAT")
DATASETS.register("ucf101", "fewshot.datasets.ucf101:UCF101")
DATASETS.register("cub", "fewshot.datasets.cub:CUB")
DATASETS.register("places365", "fewshot.datasets.places365:Places365")
DATASETS.register("imagenet-v2", "fewshot.datasets.imagenet_shifts:ImageNetV2")
DATASETS.register("imagenet-sketch", "fewshot.datasets.imagenet_shifts:ImageNetSketch")
DATASETS.register("imagenet-a", "fewshot.datasets.imagenet_shifts:ImageNetA")
DATASETS.register("imagenet-r", "fewshot.datasets.imagenet_shifts:ImageNetR")

COOP11 = (
    "imagenet",
    "caltech101",
    "oxford-pets",
    "stanford-cars",
    "flowers102",
    "food101",
    "fgvc-aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)

SUITES: dict[str, tuple[str, ...]] = {
    "toy": ("toy-shapes", "toy-colors", "toy-textures", "toy-objects"),
    "toy-shift": ("toy-shapes-sketch",),
    "coop11": COOP11,  # CoOp's table order, ImageNet first
    "proapo13": (*COOP11, "cub", "places365"),
    "imagenet-shift": ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r"),
}


def get_dataset(name: str, root: Path | str | None = None) -> Dataset:
    """An instance of the named dataset under ``root``."""
    return DATASETS.get(name)(root)


def list_datasets() -> list[str]:
    return DATASETS.names()


def resolve_datasets(names: list[str]) -> list[str]:
    """Expand suite names, keep order, drop repeats; unknown names are an error."""
    out: list[str] = []
    for name in names:
        members = SUITES.get(name, (name,))
        for member in members:
            if member not in DATASETS:
                close = difflib.get_close_matches(member, [*DATASETS.names(), *SUITES], n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"Unknown dataset or suite {member!r}.{hint} `fewshot list datasets` lists them."
                )
            if member not in out:
                out.append(member)
    return out
