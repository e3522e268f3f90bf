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

__all__ = ["DATASETS", "SUITES", "get_dataset", "list_datasets", "resolve_datasets"]


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

SUITES: dict[str, tuple[str, ...]] = {
    "toy": ("toy-shapes", "toy-colors", "toy-textures", "toy-objects"),
    "toy-shift": ("toy-shapes-sketch",),
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
