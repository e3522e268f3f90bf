"""The description set: sentences per class name, with provenance and a content hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from fewshot.types import FewshotError

__all__ = ["KINDS", "DescriptionSet", "DescriptionsError", "MissingDescriptionsError"]

KINDS = ("descriptions", "synonyms")  # what a set holds per class


class DescriptionsError(FewshotError):
    """A description set that cannot be used: unreadable, or not matching the dataset."""


class MissingDescriptionsError(DescriptionsError):
    """No set of the asked name (and kind) exists for a dataset."""


@dataclass(frozen=True)
class DescriptionSet:
    """Sentences per class name, with where they came from.

    ``classes`` keys are the dataset's class names (already matched); ``provenance`` records
    the source (file, URL or generator: model, endpoint host, prompt, sampling, date).
    """

    name: str  # e.g. "dclip", "cupl-full", "toy"
    classes: Mapping[str, tuple[str, ...]]
    kind: str = "descriptions"  # one of KINDS
    provenance: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise FewshotError(f"Unknown description kind {self.kind!r}; use one of {', '.join(KINDS)}.")

    @cached_property
    def content_hash(self) -> str:
        """sha256 (16 hex) of the sentences, independent of dict order and provenance."""
        canonical = json.dumps(
            {name: list(sentences) for name, sentences in sorted(self.classes.items())},
            ensure_ascii=False,
            separators=(",", ":"),
        )
        return hashlib.sha256(f"{self.kind}\n{canonical}".encode()).hexdigest()[:16]

    def sentences(self, classnames: Sequence[str]) -> list[tuple[str, ...]]:
        """The sentences of each class, in ``classnames`` order; an error names missing classes."""
        missing = [name for name in classnames if name not in self.classes]
        if missing:
            shown = ", ".join(repr(name) for name in missing[:5]) + (", ..." if len(missing) > 5 else "")
            raise FewshotError(
                f"Description set {self.name!r} has no {self.kind} for {shown}; "
                "use a set made for this dataset (fewshot list descriptions)."
            )
        return [tuple(self.classes[name]) for name in classnames]

    def record(self) -> dict[str, str]:
        """What a run record keeps of the set: its name, kind and content hash."""
        return {"name": self.name, "kind": self.kind, "hash": self.content_hash}
