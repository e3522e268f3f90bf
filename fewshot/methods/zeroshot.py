"""Zero-shot CLIP: classify by cosine similarity to text embeddings of class prompts.

Paper: Radford et al., "Learning Transferable Visual Models From Natural Language
Supervision", ICML 2021 (arXiv 2103.00020). Official code: https://github.com/openai/CLIP.
The few-shot literature's baseline is CoOp's ``ZeroshotCLIP`` (single hand-crafted template
per dataset) and ``ZeroshotCLIP2`` (prompt ensemble), KaiyangZhou/CoOp trainers/zsclip.py.
Spec: docs/methods.md#zero-shot-clip.

- Single template (default): w_c = normalize(E_text(template.format(c))).
- Ensemble (``ensemble=True``): every template is encoded and L2-normalised, the mean over
  templates is L2-normalised again (the OpenAI recipe). The templates are the dataset's
  ensemble (``batch.templates``), or open_clip's 80 OpenAI ImageNet templates when the
  dataset gives none.
- logits = logit_scale · normalize(f_img) · Wᵀ.

Deviations:
- CoOp's ``ZeroshotCLIP2`` adds the dataset's single template to the 7 "select" templates
  (and accumulates templates on a class attribute, a bug). Here the ensemble is exactly the
  list the dataset declares, with no accumulation; declare the 7 "select" templates (with or
  without the single one) to reproduce either CoOp variant (docs/methods.md#zero-shot-clip).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.types import AdapterConfig, FewshotError

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = ["ZeroShot", "ZeroShotConfig", "default_templates", "text_classifier"]


@dataclass(frozen=True)
class ZeroShotConfig(AdapterConfig):
    """Zero-shot CLIP settings."""

    ensemble: bool = False  # average over the prompt ensemble instead of the single template


def default_templates() -> list[str]:
    """open_clip's 80 OpenAI ImageNet templates as ``"{}"`` format strings."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    # open_clip stores them as functions of the class name; "{}" turns them into formats.
    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


def text_classifier(backbone: Backbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """Class weights (C, D): per-template normalised text features, averaged, renormalised.

    With one template this is simply the normalised text feature of each prompt.
    """
    total: torch.Tensor | None = None
    for template in templates:  # one template at a time keeps memory at (C, D)
        features = backbone.encode_texts([template.format(name) for name in classnames], normalize=True)
        total = features.float() if total is None else total + features.float()
    if total is None:
        raise FewshotError("No prompt templates given for the zero-shot classifier.")
    return F.normalize(total, dim=-1)


class ZeroShot(Adapter):
    """Zero-shot CLIP with the dataset's single template or a prompt ensemble."""

    config_cls = ZeroShotConfig
    needs = Needs.FEATURES
    supports_novel = True
    uses_support = False  # one result per (dataset, seed), whatever the shot count
    config: ZeroShotConfig

    def __init__(self, config: ZeroShotConfig | None = None) -> None:
        super().__init__(config)
        self.backbone: Backbone | None = None
        self._weights: dict[tuple[tuple[str, ...], tuple[str, ...]], torch.Tensor] = {}

    def fit(self, ctx: FitContext) -> None:
        """Nothing to learn: remember the backbone."""
        self.backbone = ctx.backbone
        self._weights.clear()

    def templates_for(self, batch: QueryBatch) -> list[str]:
        """The single template, or the ensemble (dataset's list, else OpenAI's 80)."""
        if not self.config.ensemble:
            return [batch.template]
        return list(batch.templates) or default_templates()

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """logit_scale · cos(image, class prompt) over ``batch.classnames``."""
        if self.backbone is None:
            raise FewshotError("ZeroShot.predict called before fit(): call fit(ctx) first.")
        if batch.features is None:
            raise FewshotError("ZeroShot needs image features in the QueryBatch (Needs.FEATURES).")
        key = (tuple(batch.classnames), tuple(self.templates_for(batch)))
        if key not in self._weights:  # text features of fixed prompts are computed once
            self._weights[key] = text_classifier(self.backbone, list(key[0]), list(key[1]))
        weights = self._weights[key].to(batch.features.device)
        image = F.normalize(batch.features.float(), dim=-1)
        return self.backbone.logit_scale * image @ weights.t()
