"""CLIP-Adapter: a bottleneck MLP on the frozen image feature, mixed in by a residual ratio.

Paper: Gao, Geng, Zhang, Ma, Fang, Zhang, Li, Qiao, "CLIP-Adapter: Better Vision-Language
Models with Feature Adapters", IJCV 2023 (arXiv 2110.04544). Official code:
https://github.com/gaopengcuhk/CLIP-Adapter, ``clip_adapter.py`` at commit 08d07f8b
(2022-07-19), the only code file released (its README: "complete codes will be released
soon"); it is a Dassl trainer to run with "CoOp's command". Spec: docs/methods.md#clip-adapter.

Model (``clip_adapter.py@08d07f8b``, classes ``Adapter`` and ``CustomCLIP``)::

    A(f)   = ReLU(W2 · ReLU(W1 · f))          W1: d -> d/4, W2: d/4 -> d, no biases
    f'     = α · A(f) + (1 − α) · f           α = 0.2 (hard-coded ``ratio``)
    logits = logit_scale · normalize(f') · normalize(t)ᵀ

with f the frozen image encoder's raw feature and t_c the text feature of the dataset's
single hand-crafted template for class c (``TextEncoder``; CLIP's text tower, frozen). The
released file does put a ReLU after the second linear layer too. Only W1 and W2 are trained,
with cross-entropy; CLIP runs in fp32 (``clip_model.float()``).

Training: the file builds its optimiser and schedule from the Dassl config (``OPTIM``),
which "CoOp's command" fills with CoOp's: SGD lr 0.002, momentum 0.9, weight decay 5e-4,
batch 32, cosine with one constant warm-up epoch at 1e-5, the last epoch kept. Presets
(``ClipAdapterConfig.preset``) take CoOp's epochs (:meth:`CoOpConfig.preset`): few-shot
50 / 100 / 200 epochs at 1 / 2-4 / 8-16 shots, 50 for ImageNet at every shot count.
The weights are initialised as ``nn.Linear`` does (uniform in ±1/sqrt(fan_in)), drawn
from the run's generator.

``select_alpha=true`` (not in the released file; the paper tunes α per dataset): α is
chosen from ``alphas`` (0.2, 0.4, 0.6, 0.8) by accuracy on the few-shot val set. α enters
the forward pass during training, so an adapter trained at one ratio is not the adapter of
another: one adapter is trained per candidate (each from the same generator state, so the
α = 0.2 candidate is exactly the default fit), the first best on val is kept.

Deviations from the official code:
- Training runs on cached features of V augmented views per support image, as CoOp here
  (epoch e uses view e mod V); ``--aug-views online`` augments every step as the original.
- d is the backbone's embedding width (the file hard-codes 1024, RN50's).
- The α search is our addition (an option, off by default); the official code has none.
  CLAP's repository grid-searches the ratio for its CLIP-Adapter baseline on *test*
  accuracy, which is not done here.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods._training import SGDConfig, clip_logits, fit_sgd, train_batches
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.methods.coop import CoOpConfig
from fewshot.methods.zeroshot import text_classifier
from fewshot.types import AdapterConfig, ConfigError, FewshotError
from fewshot.workload import StepCost

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = ["ClipAdapter", "ClipAdapterConfig", "ResidualAdapter"]


@dataclass(frozen=True)
class ClipAdapterConfig(SGDConfig):
    """CLIP-Adapter hyper-parameters (training settings: CoOp's, from :class:`SGDConfig`)."""

    alpha: float = 0.2  # residual ratio: f' = α·A(f) + (1-α)·f
    reduction: int = 4  # bottleneck width d / reduction
    select_alpha: bool = False  # choose α among `alphas` on the few-shot val set
    alphas: tuple[float, ...] = (0.2, 0.4, 0.6, 0.8)

    def __post_init__(self) -> None:
        self.check_training("clip-adapter")
        ratios = (self.alpha, *self.alphas) if self.select_alpha else (self.alpha,)
        if any(not 0.0 <= a <= 1.0 for a in ratios) or (self.select_alpha and not self.alphas):
            raise ConfigError(
                f"clip-adapter ratios must lie in [0, 1], got alpha={self.alpha}, alphas={self.alphas}."
            )
        if self.reduction < 1:
            raise ConfigError(f"clip-adapter reduction must be >= 1, got {self.reduction}.")

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """CoOp's epochs for the protocol, shot count and dataset (the file runs CoOp's command)."""
        return {"epochs": CoOpConfig.preset(protocol, shots, dataset)["epochs"]}


class ResidualAdapter(nn.Module):
    """ReLU(W2 · ReLU(W1 · f)) mixed with f: α·A(f) + (1 − α)·f."""

    def __init__(self, dim: int, reduction: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        hidden = max(1, dim // reduction)
        self.fc = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.ReLU()
        )
        self.alpha = alpha
        with torch.no_grad():  # nn.Linear's init (kaiming uniform, a=sqrt(5)): ±1/sqrt(fan_in)
            for layer in (self.fc[0], self.fc[2]):
                assert isinstance(layer, nn.Linear)
                bound = 1.0 / math.sqrt(layer.in_features)
                layer.weight.uniform_(-bound, bound, generator=generator)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        features = features.float()
        return self.alpha * self.fc(features) + (1.0 - self.alpha) * features


class ClipAdapter(Adapter):
    """CLIP-Adapter: a residual bottleneck MLP on the image feature, frozen text weights."""

    config_cls = ClipAdapterConfig
    needs = Needs.FEATURES  # the image encoder is frozen: the adapter runs on its features
    supports_novel = True  # the adapter is on the image side; classes come from text prompts
    config: ClipAdapterConfig

    def __init__(self, config: ClipAdapterConfig | None = None) -> None:
        super().__init__(config)
        self.backbone: Backbone | None = None
        self.adapter: ResidualAdapter | None = None
        self.val_accuracy: dict[float, float] = {}  # per candidate α, with select_alpha
        self._weights: dict[tuple[str, str], torch.Tensor] = {}

    @classmethod
    def step_cost(cls, config: AdapterConfig, classnames: list[str], online: bool) -> StepCost:
        """No text tower per step (the text weights are fixed); a batch of images online."""
        assert isinstance(config, ClipAdapterConfig)
        return StepCost(images=config.batch_size if online else 0, reads_views=True)

    def fit(self, ctx: FitContext) -> None:
        """Train the adapter (one per candidate α with ``select_alpha``); keep the last epoch."""
        cfg = self.config
        self.backbone, self._weights, self.val_accuracy = ctx.backbone, {}, {}
        text = self.text_weights(list(ctx.classnames), ctx.template).to(ctx.device)
        if not cfg.select_alpha:
            self.adapter = self._train(ctx, cfg.alpha, text)
            return
        start = ctx.generator.get_state()  # every candidate starts from the same random state
        best: tuple[float, ResidualAdapter] | None = None
        for alpha in cfg.alphas:
            generator = torch.Generator().manual_seed(0)
            generator.set_state(start.clone())
            adapter = self._train(dataclasses.replace(ctx, generator=generator), alpha, text)
            with torch.no_grad():
                scores = self._scores(adapter, ctx.val.features, text)
            self.val_accuracy[alpha] = _accuracy(scores, ctx.val.labels)
            if best is None or self.val_accuracy[alpha] > best[0]:  # first best wins
                best = (self.val_accuracy[alpha], adapter)
        assert best is not None
        self.adapter = best[1]

    def _train(self, ctx: FitContext, alpha: float, text: torch.Tensor) -> ResidualAdapter:
        cfg, dim = self.config, text.shape[-1]
        adapter = ResidualAdapter(dim, cfg.reduction, alpha, ctx.generator).to(ctx.device)
        fit_sgd(
            ctx,
            adapter.parameters(),
            cfg,
            type(self).__name__,
            lambda epoch: train_batches(ctx, epoch, cfg.batch_size),
            lambda features, labels: F.cross_entropy(self._scores(adapter, features, text).float(), labels),
        )
        return adapter.eval()

    def _scores(self, adapter: ResidualAdapter, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        assert self.backbone is not None
        return clip_logits(self.backbone.logit_scale, adapter(features.to(text.device)), text)

    def text_weights(self, classnames: list[str], template: str) -> torch.Tensor:
        """Normalised text features (C, D) of the single template, computed once per class list."""
        assert self.backbone is not None
        key = ("\x00".join(classnames), template)
        if key not in self._weights:
            self._weights[key] = text_classifier(self.backbone, classnames, [template])
        return self._weights[key]

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """logit_scale · cos(adapted image feature, text weight of each class in the batch)."""
        if self.adapter is None:
            raise FewshotError("ClipAdapter.predict called before fit(): call fit(ctx) first.")
        if batch.features is None:
            raise FewshotError("ClipAdapter needs image features in the QueryBatch (Needs.FEATURES).")
        text = self.text_weights(list(batch.classnames), batch.template).to(batch.features.device)
        return self._scores(self.adapter, batch.features, text)

    def selected(self) -> dict[str, Any]:
        """The residual ratio α used (chosen on val with ``select_alpha``, else the config's)."""
        return {} if self.adapter is None else {"alpha": self.adapter.alpha}


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Top-1 accuracy in percent."""
    return float((logits.argmax(dim=-1).cpu() == labels.cpu()).float().mean().item() * 100.0)
