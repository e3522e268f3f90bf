"""CLAP: a zero-shot-initialised linear probe held near the text weights, class by class.

Paper: Silva-Rodríguez, Hajimiri, Ben Ayed, Dolz, "A Closer Look at the Few-Shot Adaptation
of Large Vision-Language Models", CVPR 2024 (arXiv 2312.12730). Official code:
https://github.com/jusiro/CLAP at commit dbdf4095 (2025-06-07): ``trainers/adapters.py``
(``_get_base_text_features``, ``AdapterMethod``, ``CustomCLIP.forward_lp``,
``TrainerXCostume.run_epoch``, ``ADAPTER.train``/``forward_backward``/``extract_features``),
``configs/trainers/SGD_lr1e-1_B256_ep300.yaml``, ``scripts/adapt.sh``, ``train.py``
(defaults ``INIT = "ZS"``, ``CONSTRAINT = "l2"``). Spec: docs/methods.md#clap.

Algorithm as implemented (``adapt.sh`` with ``INIT=ZS``, ``CONSTRAINT=l2``):
- Text anchors t_c: the text tower's *unnormalised* features of the dataset's single
  template; for ImageNet the 7 "select" templates plus the single one, averaged without
  normalising each (``_get_base_text_features``: ``text_encoder(...)`` then ``.mean(1)``).
- Prototypes W (C, D), trained, initialised to t (``prototypes = base_text_features.clone()``).
- logits = logit_scale · normalize(f) · normalize(W)ᵀ on raw image features f.
- Pool: the support set's augmented views (the original extracts 20 augmented passes,
  ``epochs_aumentation = 20``) and their zero-shot logits (computed with W = t).
- Anchor strengths λ_c = mean over the pool's class-c rows of softmax(zero-shot logits)_c
  (``init_lagrangian_multipliers``), fixed for training.
- Loss = CE + mean_c λ_c ‖w_c − t_c‖² (``zero_shot_constraint``, sum over dimensions, mean
  over classes).
- SGD lr 0.1, momentum 0.9 (Dassl's default), weight decay 0, batch 256, 300 epochs, cosine
  with one constant warm-up epoch at 1e-5, stepped per epoch; the last epoch is kept, no
  validation. Each epoch shuffles the whole pool and runs as many batches of 256 as Dassl's
  train loader over the N support images has (N // 256 when N >= 256, else one), so an
  epoch sees N (not 20N) rows (``run_epoch`` takes ``num_batches`` from ``train_loader_x``).

Presets (``ClapConfig.preset``): ImageNet gets the 7 select templates plus its single one;
every other setting uses the one released config (``adapt.sh`` runs it for every dataset and
shot count).

Deviations from the official code:
- The pool is the harness's cached views: V = ``--aug-views`` (default 10) augmented views
  per support image, not 20. ``--aug-views 20`` gives the original pool size (views are cached
  one by one, so 20 views reuse the first 10). With online augmentation (``--aug-views 0``)
  the pool is 20 augmented passes over the support images, encoded once at the start of fit.
  The harness's augmentation is Dassl's (random resized crop, scale 0.08-1, and flip), as
  CLAP's config.
- fp32 throughout (the original computes text features in fp16 and trains in fp32).
- CLAP's repository tracks test accuracy at every step and offers a grid search selected on
  test accuracy for its baselines; neither is done here (no test data reaches a fit).
- Class-specific prototypes: novel class names cannot be classified
  (``supports_novel = False``). Falling back to the zero-shot weights for unseen names would
  report zero-shot accuracy under CLAP's name, so it is refused instead; any subset or
  reordering of the training class names is accepted (ImageNet-A/R style targets).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods._templates import IMAGENET_SELECT_TEMPLATES
from fewshot.methods._training import SGDConfig, clip_logits, fit_sgd
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.types import AdapterConfig, ConfigError, FeatureSet, FewshotError
from fewshot.workload import StepCost

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = [
    "Clap",
    "ClapConfig",
    "anchor_strengths",
    "clap_loss",
    "closed_set_columns",
    "online_views",
]


ONLINE_VIEWS = 20  # the original's augmented passes, used when the harness caches no views


@dataclass(frozen=True)
class ClapConfig(SGDConfig):
    """CLAP hyper-parameters (configs/trainers/SGD_lr1e-1_B256_ep300.yaml)."""

    epochs: int = 300
    lr: float = 0.1
    batch_size: int = 256
    weight_decay: float = 0.0
    # Templates averaged (unnormalised) into the anchors; () = the dataset's single template.
    templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        self.check_training("clap")
        if any("{}" not in t for t in self.templates):
            raise ConfigError(f"clap templates must contain {{}} for the class name, got {self.templates}.")

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """ImageNet: the 7 select templates plus "a photo of a {}." (``_get_base_text_features``)."""
        if dataset == "imagenet":
            return {"templates": (*IMAGENET_SELECT_TEMPLATES, "a photo of a {}.")}
        return {}


def anchor_strengths(zs_logits: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """λ_c = mean over rows of class c of softmax(zero-shot logits)[:, c] (C,)."""
    probs = zs_logits.float().softmax(dim=-1)
    onehot = F.one_hot(labels, num_classes).float()
    return (probs * onehot).sum(0) / onehot.sum(0).clamp_min(1.0)


def clap_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    prototypes: torch.Tensor,
    anchors: torch.Tensor,
    strengths: torch.Tensor,
) -> torch.Tensor:
    """CE(logits, labels) + mean_c λ_c ‖w_c − t_c‖²."""
    penalty = (prototypes.float() - anchors.float()).pow(2).sum(dim=-1)
    return F.cross_entropy(logits.float(), labels) + (strengths * penalty).mean()


def online_views(ctx: FitContext, views: int) -> FeatureSet:
    """``views`` augmented passes over the support images, encoded now (view-major)."""
    features, labels = [], []
    for _ in range(views):
        loader = ctx.train_images.loader(256, augment=True, shuffle=False, generator=ctx.generator)
        for images, batch_labels in loader:
            with torch.no_grad(), ctx.autocast():
                features.append(ctx.backbone.encode_images(images.to(ctx.device)).float().cpu())
            labels.append(batch_labels.cpu())
    rows = torch.cat(labels)
    ids = tuple(ctx.train.ids) * views if len(ctx.train) * views == len(rows) else ("",) * len(rows)
    return FeatureSet(torch.cat(features), rows, ids)


def closed_set_columns(method: str, trained: list[str], classnames: list[str]) -> list[int]:
    """Indices of ``classnames`` among the ``trained`` ones; a clear error for unseen names."""
    unknown = [name for name in classnames if name not in trained]
    if unknown:
        raise FewshotError(
            f"{method} cannot classify classes it was not trained on ({', '.join(unknown[:5])}"
            f"{', ...' if len(unknown) > 5 else ''}): it learns one prototype per training class. "
            "Use a method with supports_novel (e.g. zeroshot, coop, clip-adapter) for unseen classes."
        )
    return [trained.index(name) for name in classnames]


class Clap(Adapter):
    """CLAP: zero-shot-initialised class prototypes with a class-adaptive L2 anchor."""

    config_cls = ClapConfig
    needs = Needs.FEATURES
    supports_novel = False  # one prototype per training class
    config: ClapConfig

    def __init__(self, config: ClapConfig | None = None) -> None:
        super().__init__(config)
        self.backbone: Backbone | None = None
        self.classnames: list[str] = []
        self.anchors: torch.Tensor | None = None  # t (C, D), unnormalised
        self.strengths: torch.Tensor | None = None  # λ (C,)
        self.prototypes: nn.Parameter | None = None  # W (C, D)

    @classmethod
    def step_cost(cls, config: AdapterConfig, classnames: list[str], online: bool) -> StepCost:
        """Nothing runs through the encoders per step (the pool is encoded before training)."""
        return StepCost(reads_views=True)

    def anchor_features(self, backbone: Backbone, classnames: list[str], template: str) -> torch.Tensor:
        """t (C, D): unnormalised text features averaged over the templates, unnormalised."""
        templates = list(self.config.templates) or [template]
        total = sum(
            backbone.encode_texts([t.format(name) for name in classnames], normalize=False).float()
            for t in templates
        )
        assert isinstance(total, torch.Tensor)
        return total / len(templates)

    def fit(self, ctx: FitContext) -> None:
        """Anchor strengths from zero-shot confidence on the pool, then 300 epochs of SGD."""
        cfg = self.config
        self.backbone, self.classnames = ctx.backbone, list(ctx.classnames)
        self.anchors = self.anchor_features(ctx.backbone, self.classnames, ctx.template).to(ctx.device)
        self.prototypes = nn.Parameter(self.anchors.clone())
        pool = ctx.train_views if ctx.train_views is not None else online_views(ctx, ONLINE_VIEWS)
        features, labels = pool.features.to(ctx.device).float(), pool.labels.to(ctx.device)
        with torch.no_grad():
            zs_logits = clip_logits(ctx.backbone.logit_scale, features, self.anchors)
        self.strengths = anchor_strengths(zs_logits, labels, len(self.classnames))
        per_epoch = max(1, len(ctx.train) // cfg.batch_size)  # Dassl's batches over N images

        def batches(epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            order = torch.randperm(len(labels), generator=ctx.generator).to(ctx.device)
            for index in torch.split(order, cfg.batch_size)[:per_epoch]:
                yield features[index], labels[index]

        fit_sgd(ctx, [self.prototypes], cfg, type(self).__name__, batches, self.loss)

    def loss(self, features: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The training loss of one batch of raw image features."""
        assert self.prototypes is not None and self.anchors is not None and self.strengths is not None
        logits = self.logits(features, self.prototypes)
        return clap_loss(logits, labels, self.prototypes, self.anchors, self.strengths)

    def logits(self, features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        assert self.backbone is not None
        return clip_logits(self.backbone.logit_scale, features, prototypes)

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """logit_scale · cos(image, prototype) over ``batch.classnames`` (training classes only)."""
        if self.prototypes is None:
            raise FewshotError("Clap.predict called before fit(): call fit(ctx) first.")
        if batch.features is None:
            raise FewshotError("Clap needs image features in the QueryBatch (Needs.FEATURES).")
        columns = closed_set_columns("clap", self.classnames, list(batch.classnames))
        prototypes = self.prototypes.detach()[columns].to(batch.features.device)
        return self.logits(batch.features, prototypes)

    def trainable_parameters(self) -> int:
        """The prototypes, C·D."""
        return 0 if self.prototypes is None else self.prototypes.numel()
