"""Writing description sets in the native file format.

``$FEWSHOT_DATA/descriptions/<dataset>/<name>.json`` holds::

    {"fewshot_descriptions": 1, "name": str, "kind": "descriptions" | "synonyms",
     "provenance": {...}, "classes": {classname: [sentences]}}

with classes keyed by the dataset's class names. Files are written atomically.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from fewshot._io import atomic_write_text
from fewshot.descriptions import DescriptionSet
from fewshot.types import ConfigError

__all__ = ["FORMAT_VERSION", "SETS_DIR", "check_set_name", "set_path", "write_set"]

FORMAT_VERSION = 1
SETS_DIR = "descriptions"  # under the data root
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]*")


def check_set_name(name: str) -> str:
    """``name`` if it is a valid set name (lower-case letters, digits, ``.``, ``_``, ``-``)."""
    if not _NAME.fullmatch(name):
        raise ConfigError(
            f"Bad description set name {name!r}: use lower-case letters, digits, '.', '_' and '-', "
            "starting with a letter or digit."
        )
    return name


def set_path(data_root: Path, dataset: str, name: str) -> Path:
    """Where the set ``name`` of ``dataset`` lives under ``data_root``."""
    return Path(data_root) / SETS_DIR / dataset / f"{check_set_name(name)}.json"


def write_set(data_root: Path, dataset: str, dset: DescriptionSet) -> Path:
    """Write ``dset`` for ``dataset`` atomically; return the file's path."""
    path = set_path(data_root, dataset, dset.name)
    document = {
        "fewshot_descriptions": FORMAT_VERSION,
        "name": dset.name,
        "kind": dset.kind,
        "provenance": dict(dset.provenance),
        "classes": {name: list(sentences) for name, sentences in dset.classes.items()},
    }
    atomic_write_text(path, json.dumps(document, ensure_ascii=False, indent=1) + "\n")
    return path
