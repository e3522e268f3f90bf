"""CuPL: class embeddings from LLM-generated sentences, averaged.

Paper: Pratt, Covert, Liu, Farhadi, "What does a platypus look like? Generating
customized prompts for zero-shot image classification", ICCV 2023 (arXiv 2209.03320).
Official code: https://github.com/sarahpratt/CuPL, commit 719619c8 (files read:
classify_imagenet.py, imagenet_prompts/standard_image_prompts.py).
Spec: docs/methods.md#cupl.

Algorithm as implemented (classify_imagenet.py, ``zeroshot_classifier_gpt``):
- Every generated sentence of class c is encoded as written (no template around it),
  with truncation to the context length (``clip.tokenize(..., truncate=True)``).
- w_c = normalize(mean_i normalize(E_text(s_{c,i}))).
- "CuPL + standard" (``standard=True``, the script's ``use_both=True``): the template
  prompts ``t.format(c)`` and the generated sentences go into ONE list, each embedding is
  normalised, and the list is averaged and renormalised (a pooled mean, not a mean of the
  two means). The script's templates are ``imagenet_templates``, the 80 OpenAI ImageNet
  templates (open_clip's ``OPENAI_IMAGENET_TEMPLATES``), also used here by default;
  ``standard_templates="dataset"`` pools with the dataset's own ensemble instead.
- logits = logit_scale · normalize(f_img) · Wᵀ (the script takes argmax of the cosine;
  the scale changes no prediction and matches zero-shot CLIP's logits).

Deviations from the official code:
- Sentences come from the run's description set (``descriptions``: "cupl-full" = CuPL's
  per-dataset "full" prompt files, "toy" = the toy world's own), matched to the dataset's
  class names by the loader; the script reads ``CuPL_image_prompts.json`` keyed by its own
  ImageNet class names.
- With no set configured (``descriptions=""``) the class embedding is the bare class name
  (or, with ``standard=True``, the templates alone); the script always has sentences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from fewshot.methods._knowledge import TextCache, knowledge_set, set_preset
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.methods.zeroshot import default_templates
from fewshot.types import AdapterConfig, ConfigError, FewshotError

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = ["CuPL", "CuPLConfig"]


@dataclass(frozen=True)
class CuPLConfig(AdapterConfig):
    """CuPL settings (the preset names the description set)."""

    descriptions: str = ""  # description set name; "" = none (class name only)
    standard: bool = False  # "CuPL + standard": pool the sentences with template prompts
    standard_templates: str = "openai80"  # "openai80" (CuPL's script) or "dataset" (its ensemble)

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """The toy world's own set on toy datasets, CuPL's "full" sentences elsewhere."""
        return {"descriptions": set_preset(dataset, "cupl-full")}

    def __post_init__(self) -> None:
        if self.standard_templates not in ("openai80", "dataset"):
            raise ConfigError(
                f"standard_templates must be 'openai80' or 'dataset', got {self.standard_templates!r}."
            )


class CuPL(Adapter):
    """Customized prompts: the normalised mean of a class's generated sentences."""

    config_cls = CuPLConfig
    needs = Needs.FEATURES
    supports_novel = True  # description sets cover every class of the dataset
    uses_support = False  # training-free: one result per (dataset, seed)
    knowledge: ClassVar[tuple[str, ...]] = ("descriptions",)
    config: CuPLConfig

    def __init__(self, config: CuPLConfig | None = None) -> None:
        super().__init__(config)
        self.backbone: Backbone | None = None
        self.cache: TextCache | None = None

    def fit(self, ctx: FitContext) -> None:
        """Nothing to learn: remember the backbone and check the set covers the classes."""
        self.backbone = ctx.backbone
        self.cache = TextCache(ctx.backbone)
        knowledge = knowledge_set("cupl", "descriptions", self.config.descriptions, ctx.descriptions)
        if knowledge is not None:
            knowledge.sentences(ctx.classnames)

    def class_prompts(self, batch: QueryBatch) -> list[list[str]]:
        """Each class's pooled list: template prompts (with ``standard``) then its sentences."""
        knowledge = knowledge_set("cupl", "descriptions", self.config.descriptions, batch.descriptions)
        sentences = knowledge.sentences(batch.classnames) if knowledge else [() for _ in batch.classnames]
        templates: list[str] = []
        if self.config.standard and self.config.standard_templates == "dataset":
            if not batch.templates:
                raise FewshotError(
                    "cupl standard_templates=dataset: this dataset declares no template ensemble; "
                    "use standard_templates=openai80 (CuPL's 80 templates)."
                )
            templates = list(batch.templates)
        elif self.config.standard:
            templates = default_templates()
        groups = [
            [t.format(c) for t in templates] + list(s)
            for c, s in zip(batch.classnames, sentences, strict=True)
        ]
        return [group or [c] for c, group in zip(batch.classnames, groups, strict=True)]

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """logit_scale · cos(image, normalised mean sentence embedding of each class)."""
        if self.backbone is None or self.cache is None:
            raise FewshotError("CuPL.predict called before fit(): call fit(ctx) first.")
        if batch.features is None:
            raise FewshotError("CuPL needs image features in the QueryBatch (Needs.FEATURES).")
        weights = self.cache.mean(self.class_prompts(batch)).to(batch.features.device)
        image = F.normalize(batch.features.float(), dim=-1)
        return self.backbone.logit_scale * image @ weights.t()

    def extra_costs(self) -> dict[str, float]:
        """Distinct prompts run through the text encoder."""
        return {"prompts_encoded": float(self.cache.encoded if self.cache else 0)}
