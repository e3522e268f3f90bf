"""PromptSRC: IVLP prompts regularised towards frozen CLIP, aggregated over epochs (GPA).

Paper: Khattak, Wasim, Naseer, Khan, Yang, Khan, "Self-regulating Prompts: Foundational
Model Adaptation without Forgetting", ICCV 2023 (arXiv 2307.06948). Official code:
https://github.com/muzairkhattak/PromptSRC (trainers/promptsrc.py, trainers/imagenet_templates.py,
clip/model.py ``ResidualAttentionBlock_IVLP``, configs/trainers/PromptSRC/*.yaml).
Spec: docs/methods.md#promptsrc.

Prompts as IVLP (:mod:`fewshot.methods.ivlp`): 4 text + 4 vision tokens, depth 9/9. Loss
per batch, with t̂, f̂ the normalised prompted text and image features, t̃, f̃ the
normalised frozen ones, z = logit_scale · f̂ t̂ᵀ and z̃ = logit_scale · f̃ t̃ᵀ::

    L = CE(z, y) + 25 · mean|t̂ - t̃| + 10 · mean|f̂ - f̃|
        + Σ softmax(z̃) (log_softmax(z̃) - log_softmax(z)) / (B · C)

- text teacher t̃: per class, the mean of the UN-normalised frozen text features over
  PromptSRC's 60 templates, normalised afterwards (not the usual ensemble of normalised
  features);
- image teacher f̃: the frozen, unprompted image encoder on the same augmented images;
- the KL term is ``kl_div(log_softmax(z), log_softmax(z̃), reduction="sum",
  log_target=True) / z.numel()``, i.e. KL(softmax(z̃) ‖ softmax(z)).
GPA: after epoch e (1..E) the prompts are accumulated with weight w_e ∝ exp(-(e-μ)²/(2σ²)),
Σ w_e = 1; after the last epoch the aggregate replaces the prompts and is what is evaluated.
SGD lr 0.0025 (momentum 0.9, weight decay 5e-4), batch 4, cosine with one constant warm-up
epoch at 1e-5.

The 60 templates (:func:`promptsrc_templates`): trainers/imagenet_templates.py holds the
first 60 of OpenAI's 80 ImageNet templates (open_clip's ``OPENAI_IMAGENET_TEMPLATES``), in
their order, except that "a photo of a {}." (OpenAI's 40th) comes first. They are taken
from open_clip by index, not pasted.

Presets (``PromptSRCConfig.preset``), from configs/trainers/PromptSRC/:
- ``base2novel``: ``vit_b16_c2_ep20_batch4_4+4ctx``: depth 9/9, 20 epochs, GPA μ 15, σ 1.
- ``fewshot``: ``vit_b16_c2_ep50_batch4_4+4ctx_few_shot``: depth 9/9, 50 epochs; GPA per
  dataset (the config's two settings, chosen by the preset from the dataset's name):
  μ 30, σ 30 for ImageNet, Caltech101, OxfordPets, Food101, UCF101 and SUN397; μ 45, σ 5
  for StanfordCars, Flowers102, FGVCAircraft, DTD and EuroSAT; other datasets (the toy
  ones included) get μ 30, σ 30, the setting the config file leaves active
  (muzairkhattak/PromptSRC@bb95c77b configs/trainers/PromptSRC/
  vit_b16_c2_ep50_batch4_4+4ctx_few_shot.yaml).
- ``cross-dataset`` and ``domain-generalization``: ``..._cross_datasets``: depth 3/3,
  20 epochs, GPA μ 6, σ 10.

Deviations from the official code:
- fp32 prompts under autocast; the teachers run in the backbone's precision under the same
  autocast (the original runs everything in fp16 and accumulates GPA in fp16).
- GPA aggregates the prompts only. The original aggregates the whole state dict; the frozen
  weights come out unchanged there (Σ w = 1) up to fp16 rounding.
- GPA weights are normalised in log space (a softmax of -(e-μ)²/(2σ²)), which equals the
  original's normalised Gaussian but cannot underflow to 0/0 when few epochs lie far from μ.
- The image teacher is the backbone's own encoder without prompts: prompts are passed to
  the encoder per call instead of being installed in the model, so no second copy of the
  image tower is needed.
- The depth cap, the ``ctx_init`` check, the generator and the prompt-length check of IVLP
  (see :mod:`fewshot.methods.ivlp`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods.base import FitContext
from fewshot.methods.ivlp import IVLP, IVLPConfig
from fewshot.prompting import ClassPrompts
from fewshot.types import ConfigError, FewshotError

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = [
    "GPA_BY_DATASET",
    "PromptSRC",
    "PromptSRCConfig",
    "few_shot_gpa",
    "gpa_weights",
    "promptsrc_templates",
    "self_consistency_terms",
    "teacher_text_features",
]

# Few-shot GPA (mean, std) per dataset, from the comments of the few-shot config. Keys are
# dataset names lower-cased without separators ("oxford_pets" -> "oxfordpets").
_GPA_30_30 = ("imagenet", "caltech101", "oxfordpets", "food101", "ucf101", "sun397")
_GPA_45_5 = (
    "stanfordcars",
    "oxfordflowers",
    "flowers102",
    "fgvcaircraft",
    "dtd",
    "describabletextures",
    "eurosat",
)
GPA_BY_DATASET: dict[str, tuple[float, float]] = {
    **{name: (30.0, 30.0) for name in _GPA_30_30},
    **{name: (45.0, 5.0) for name in _GPA_45_5},
}
GPA_DEFAULT = (30.0, 30.0)  # the setting the few-shot config file leaves active


@dataclass(frozen=True)
class PromptSRCConfig(IVLPConfig):
    """PromptSRC hyper-parameters (defaults: configs/trainers/PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx)."""

    text_weight: float = 25.0  # L1 between prompted and frozen text features
    image_weight: float = 10.0  # L1 between prompted and frozen image features
    gpa_mean: float = 15.0  # GPA: epoch weights ∝ exp(-(e - mean)² / (2 std²)), e = 1..epochs
    gpa_std: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.text_weight < 0 or self.image_weight < 0:
            raise ConfigError("promptsrc text_weight and image_weight must be >= 0.")
        if self.gpa_std <= 0:
            raise ConfigError(f"promptsrc gpa_std must be positive, got {self.gpa_std}.")

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """The official configs per protocol, GPA per dataset (see the module docstring)."""
        if protocol == "fewshot":
            mean, std = few_shot_gpa(dataset)
            return {"epochs": 50, "gpa_mean": mean, "gpa_std": std}
        if protocol in ("cross-dataset", "domain-generalization"):
            return {"depth_text": 3, "depth_vision": 3, "gpa_mean": 6.0, "gpa_std": 10.0}
        return {}


def promptsrc_templates() -> list[str]:
    """PromptSRC's 60 teacher templates, taken from open_clip's 80 OpenAI templates."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    openai = [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]
    if len(openai) != 80 or openai[39] != "a photo of a {}.":
        raise FewshotError(
            "open_clip's OPENAI_IMAGENET_TEMPLATES changed (expected 80, 'a photo of a {}.' 40th); "
            "PromptSRC's 60 templates are defined by their positions in it. Install an open_clip "
            "version with the original list."
        )
    return [openai[39], *openai[:39], *openai[40:60]]


def few_shot_gpa(dataset: str) -> tuple[float, float]:
    """GPA (mean, std) of the few-shot config for ``dataset`` (its registry name)."""
    return GPA_BY_DATASET.get(re.sub(r"[^a-z0-9]", "", dataset.lower()), GPA_DEFAULT)


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """Normalised Gaussian weights of epochs 1..E: w_e ∝ exp(-(e - mean)² / (2 std²))."""
    logits = [-((e - mean) ** 2) / (2.0 * std**2) for e in range(1, epochs + 1)]
    top = max(logits, default=0.0)
    raw = [math.exp(x - top) for x in logits]
    return [w / sum(raw) for w in raw]


@torch.no_grad()
def teacher_text_features(backbone: Backbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """Normalised per-class mean of the UN-normalised frozen text features over ``templates``."""
    texts = [template.replace("{}", name) for template in templates for name in classnames]
    features = backbone.encode_texts(texts, normalize=False)  # (T * C, D), template-major
    mean = features.view(len(templates), len(classnames), -1).mean(dim=0)
    return F.normalize(mean, dim=-1)


def self_consistency_terms(
    logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    text: torch.Tensor,
    teacher_text: torch.Tensor,
    image: torch.Tensor,
    teacher_image: torch.Tensor,
) -> dict[str, torch.Tensor]:
    """PromptSRC's unweighted regularisers (all features normalised): L1 of the text and of
    the image features (mean over elements), and KL(softmax(teacher) ‖ softmax(logits))
    summed and divided by ``logits.numel()``."""
    kl = F.kl_div(
        F.log_softmax(logits, dim=1), F.log_softmax(teacher_logits, dim=1), reduction="sum", log_target=True
    )
    return {
        "text_l1": F.l1_loss(text, teacher_text, reduction="mean"),
        "image_l1": F.l1_loss(image, teacher_image, reduction="mean"),
        "kl": kl / logits.numel(),
    }


class PromptSRC(IVLP):
    """IVLP prompts with self-consistency losses and Gaussian prompt aggregation."""

    config_cls = PromptSRCConfig
    method = "promptsrc"
    teacher_passes = 1  # the frozen image teacher sees every training image too
    config: PromptSRCConfig

    def __init__(self, config: PromptSRCConfig | None = None) -> None:
        super().__init__(config)
        self._teacher_text: torch.Tensor | None = None
        self._weights: list[float] = []
        self._aggregate: dict[str, torch.Tensor] = {}
        self._teacher_images = 0

    def _prepare(self, ctx: FitContext, prompts: ClassPrompts) -> None:
        """Frozen text teacher of the training classes; GPA weights; an empty aggregate."""
        assert self.prompts is not None
        templates = promptsrc_templates()
        self._teacher_text = teacher_text_features(ctx.backbone, list(ctx.classnames), templates)
        cfg = self.config
        self._weights = gpa_weights(cfg.epochs, cfg.gpa_mean, cfg.gpa_std)
        self._aggregate = {k: torch.zeros_like(v) for k, v in self.prompts.state_dict().items()}
        self._teacher_images = 0

    def _loss(self, images: torch.Tensor, labels: torch.Tensor, prompts: ClassPrompts) -> torch.Tensor:
        """CE + 25 · L1(text) + 10 · L1(image) + KL, as trainers/promptsrc.py."""
        assert self.backbone is not None and self._teacher_text is not None
        scale, cfg = self.backbone.logit_scale, self.config
        text = F.normalize(self._encode_text(prompts).float(), dim=-1)
        image = F.normalize(self._encode_images(images).float(), dim=-1)
        logits = scale * image @ text.t()
        with torch.no_grad():
            teacher_image = F.normalize(self.backbone.encode_images(images).float(), dim=-1)
        self._teacher_images += images.shape[0]
        teacher_text = self._teacher_text.to(text.device)
        terms = self_consistency_terms(
            logits, scale * teacher_image @ teacher_text.t(), text, teacher_text, image, teacher_image
        )
        regulariser = cfg.text_weight * terms["text_l1"] + cfg.image_weight * terms["image_l1"] + terms["kl"]
        return F.cross_entropy(logits, labels) + regulariser

    def _end_epoch(self, epoch: int) -> None:
        """GPA: add this epoch's prompts with their Gaussian weight."""
        assert self.prompts is not None
        weight = self._weights[epoch]
        with torch.no_grad():
            for key, value in self.prompts.state_dict().items():
                self._aggregate[key] += weight * value

    def _end_fit(self) -> None:
        """Evaluate the aggregated prompts."""
        assert isinstance(self.prompts, nn.Module)
        self.prompts.load_state_dict(self._aggregate)

    def extra_costs(self) -> dict[str, float]:
        """Passes of the frozen image teacher (a second image-encoder pass per training image)."""
        return {"teacher_image_encodings": float(self._teacher_images)}
