"""Shared plumbing of the training-free knowledge methods (DCLIP, CuPL, ProAPO).

- :func:`knowledge_set`: the description or synonym set a method's config names, as the
  harness handed it over (an error when a named set did not arrive).
- :func:`set_preset`: the default set name per dataset (the toy world's own sets on toy
  datasets, a published set elsewhere).
- :class:`TextCache`: normalised text embeddings cached per prompt string, so every
  distinct prompt goes through the text encoder once per run; it counts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from fewshot.types import FewshotError

if TYPE_CHECKING:
    from fewshot.backbones import Backbone
    from fewshot.descriptions import DescriptionSet

__all__ = ["TextCache", "knowledge_set", "set_preset"]


# Published sets that have no pinned file for a dataset (fewshot.descriptions.published),
# and the set a preset reads there instead: ImageNet's CuPL "full" sentences are not pinned
# (their contents were missing from the snapshot the checksums were taken from).
_SUBSTITUTES = {("imagenet", "cupl-full"): "cupl-base"}


def set_preset(dataset: str, published: str) -> str:
    """The set a knowledge method reads by default: "toy" on toy datasets, ``published``
    on a real dataset (or its substitute where that set cannot be downloaded; a shifted
    domain such as imagenet-v2 reads its source's sets), "" (none) when the dataset is not
    known (e.g. a bare contract test)."""
    if dataset.startswith("toy"):
        return "toy"
    if not dataset:
        return ""
    from fewshot.datasets import DATASETS

    source = getattr(DATASETS.get(dataset), "domain_of", None) if dataset in DATASETS.names() else None
    return _SUBSTITUTES.get((source or dataset, published), published)


def knowledge_set(
    method: str, kind: str, configured: str, given: DescriptionSet | None
) -> DescriptionSet | None:
    """The set of ``kind`` a method uses: None when its config names none (""), else the one
    the harness loaded; a set named but not handed over is an error, not a silent fallback."""
    if not configured:
        return None
    if given is None:
        raise FewshotError(
            f"{method} is configured with {kind} set {configured!r} but the run carries no {kind}; "
            f"run it through fewshot run (which loads the set), or pass `--set {kind}=` to use none."
        )
    return given


class TextCache:
    """L2-normalised text embeddings of prompt strings, each string encoded once."""

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self._rows: dict[str, int] = {}
        self._chunks: list[torch.Tensor] = []
        self._table: torch.Tensor | None = None

    @property
    def encoded(self) -> int:
        """Number of distinct prompts run through the text encoder so far."""
        return len(self._rows)

    def __call__(self, prompts: Sequence[str]) -> torch.Tensor:
        """Embeddings (N, D) of ``prompts`` in order (normalised, float32)."""
        new = list(dict.fromkeys(p for p in prompts if p not in self._rows))
        if new:
            start = len(self._rows)
            self._chunks.append(self.backbone.encode_texts(new, normalize=True).float())
            self._rows.update({p: start + i for i, p in enumerate(new)})
            self._table = None
        if self._table is None:
            self._table = torch.cat(self._chunks) if self._chunks else torch.empty(0, self.backbone.embed_dim)
        index = torch.tensor([self._rows[p] for p in prompts], dtype=torch.long, device=self._table.device)
        return self._table.index_select(0, index)

    def mean(self, groups: Sequence[Sequence[str]]) -> torch.Tensor:
        """One row per group: the normalised mean of its normalised prompt embeddings (C, D)."""
        flat = [p for group in groups for p in group]
        if any(not group for group in groups):
            raise FewshotError("A class has no prompt to embed.")
        embeddings = self(flat)
        owner = torch.repeat_interleave(
            torch.arange(len(groups), device=embeddings.device),
            torch.tensor([len(g) for g in groups], device=embeddings.device),
        )
        total = torch.zeros(len(groups), embeddings.shape[1], device=embeddings.device)
        total.index_add_(0, owner, embeddings)
        return torch.nn.functional.normalize(total, dim=-1)
