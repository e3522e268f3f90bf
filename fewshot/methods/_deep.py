"""What the deep prompt learners (IVLP, MaPLe, PromptSRC) share.

- :class:`DeepPromptConfig`: the training settings every one of them has (Dassl SGD,
  cosine with one constant warm-up epoch, batch 4, the context init words).
- :class:`DeepPromptAdapter`: fit and predict with learned prompts in both towers. Every
  training image goes through the prompted image encoder (``Needs.IMAGES``), and the text
  features of all training classes are recomputed at every step, as in the originals. A
  subclass builds its prompt module and says which prompts each tower gets; PromptSRC adds
  its losses and the prompt aggregation through the hooks ``_prepare``, ``_loss``,
  ``_end_epoch`` and ``_end_fit``.

Initialisation (:func:`fewshot.prompting.initial_context`, :func:`~fewshot.prompting.normal_prompts`,
``_training.seeded_linear``) draws from the run's generator, never the global RNG. The
class prompt is ``"{ctx_init} {class name}."`` tokenised once per class list, with the
first n context positions (after SOS) replaced by the learned layer-0 context; MaPLe's two
context tokens leave "of a" of "a photo of a" in place, as the original does.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods._training import SGDConfig, clip_logits, fit_sgd, image_batches
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.prompting import (
    ClassPrompts,
    PerClassList,
    PromptBuilder,
    TextTower,
    VisionTower,
    encode_class_prompts,
    encode_images_prompted,
    text_tower,
    vision_tower,
)
from fewshot.types import AdapterConfig, FewshotError
from fewshot.workload import StepCost, prompts_with

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = ["DeepPromptAdapter", "DeepPromptConfig"]


@dataclass(frozen=True)
class DeepPromptConfig(SGDConfig):
    """Training settings shared by the deep prompt learners (Dassl SGD; batch 4, 20 epochs,
    lr 0.0025 as PromptSRC's and IVLP's configs; deep prompts ~ N(0, init_std²))."""

    epochs: int = 20
    lr: float = 0.0025
    batch_size: int = 4
    ctx_init: str = "a photo of a"  # init words of the layer-0 text context; "" = random


class DeepPromptAdapter(Adapter):
    """Learned prompts in both towers, trained end to end on augmented support images."""

    needs = Needs.IMAGES  # query images pass through the prompted image encoder
    supports_novel = True
    method: ClassVar[str] = "deep prompts"  # name used in messages and progress bars
    teacher_passes: ClassVar[int] = 0  # extra image-encoder passes per training image
    config: DeepPromptConfig

    def __init__(self, config: DeepPromptConfig | None = None) -> None:
        super().__init__(config)
        self.backbone: Backbone | None = None
        self.prompts: nn.Module | None = None
        self.prompts_for: PromptBuilder | None = None  # class names -> frozen prompt buffers
        self._text_tower: TextTower | None = None
        self._vision_tower: VisionTower | None = None
        self._prompt_prefix = ""
        self._autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
        self._text: PerClassList[torch.Tensor] = PerClassList()

    @classmethod
    def step_cost(cls, config: AdapterConfig, classnames: list[str], online: bool) -> StepCost:
        """Every class prompt and a batch of images through the prompted encoders per step
        (``teacher_passes`` more image passes for a frozen teacher, as PromptSRC's)."""
        assert isinstance(config, DeepPromptConfig)
        n_ctx = int(getattr(config, "n_ctx_text", getattr(config, "n_ctx", 1)))
        prompts = prompts_with(config.ctx_init, n_ctx, classnames)
        return StepCost(prompts, images=config.batch_size * (1 + cls.teacher_passes))

    # -- what a subclass defines -----------------------------------------------------------

    @abc.abstractmethod
    def _build_prompts(self, ctx: FitContext, text: TextTower, vision: VisionTower) -> nn.Module:
        """The trainable prompt module (prompts and couplings only); sets ``_prompt_prefix``."""

    @abc.abstractmethod
    def _text_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The layer-0 text context (n, W_text) and the deep text prompts of blocks 1..J-1."""

    @abc.abstractmethod
    def _vision_prompts(self) -> list[torch.Tensor]:
        """The vision prompts: layer 0 (appended), then blocks 1..J-1 (replacing); may be empty."""

    def _prepare(self, ctx: FitContext, prompts: ClassPrompts) -> None:
        """Called once before training (PromptSRC computes its frozen teachers here)."""

    def _loss(self, images: torch.Tensor, labels: torch.Tensor, prompts: ClassPrompts) -> torch.Tensor:
        """Training loss of one batch: cross-entropy over the training classes."""
        return F.cross_entropy(self._logits(self._encode_images(images), self._encode_text(prompts)), labels)

    def _end_epoch(self, epoch: int) -> None:
        """Called after every epoch (0-based), after the LR step."""

    def _end_fit(self) -> None:
        """Called after the last epoch."""

    # -- fit -------------------------------------------------------------------------------

    def fit(self, ctx: FitContext) -> None:
        """Train the prompts for ``epochs`` epochs on augmented support images; keep the last."""
        cfg = self.config
        self.backbone, self._autocast = ctx.backbone, ctx.autocast
        self._text_tower = text_tower(ctx.backbone.model)
        self._vision_tower = vision_tower(ctx.backbone.model, ctx.backbone.id)
        self._text.clear()
        self.prompts = self._build_prompts(ctx, self._text_tower, self._vision_tower).to(ctx.device)
        n_ctx = int(self._text_prompts()[0].shape[0])
        self.prompts_for = PromptBuilder(ctx.backbone, self._text_tower, n_ctx, self._prompt_prefix)
        prompts = self.prompts_for(ctx.classnames)
        self._prepare(ctx, prompts)
        if cfg.epochs == 0:
            return
        fit_sgd(
            ctx,
            self.prompts.parameters(),
            cfg,
            self.method,
            lambda epoch: image_batches(ctx, epoch, cfg.batch_size),
            lambda images, labels: self._loss(images, labels, prompts),
            self._end_epoch,
        )
        self._end_fit()

    # -- encoders --------------------------------------------------------------------------

    def _encode_text(self, prompts: ClassPrompts) -> torch.Tensor:
        """Unnormalised text features (C, D) of the prompted class prompts."""
        assert self._text_tower is not None
        ctx, deep = self._text_prompts()
        return encode_class_prompts(self._text_tower, prompts, ctx, deep_prompts=deep)

    def _encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """Unnormalised image features (B, D) from the prompted image encoder."""
        assert self._vision_tower is not None
        return encode_images_prompted(self._vision_tower, images, self._vision_prompts())

    def _logits(self, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        assert self.backbone is not None
        return clip_logits(self.backbone.logit_scale, image, text)

    # -- predict ---------------------------------------------------------------------------

    def text_features(self, classnames: list[str]) -> torch.Tensor:
        """L2-normalised text features (C, D) of the learned prompts for ``classnames``."""
        return self._text.get(classnames, lambda: self._frozen_text(classnames))

    def _frozen_text(self, classnames: list[str]) -> torch.Tensor:
        """The prompts are fixed after fit: each class list is encoded once, without gradients."""
        assert self.prompts_for is not None
        with torch.no_grad(), self._autocast():
            text = self._encode_text(self.prompts_for(classnames))
        return F.normalize(text.float(), dim=-1)

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """logit_scale · cos(prompted image feature, prompted text feature of each class)."""
        if self.prompts is None:
            raise FewshotError(f"{self.method}.predict called before fit(): call fit(ctx) first.")
        if batch.images is None:
            raise FewshotError(f"{self.method} needs images in the QueryBatch (Needs.IMAGES).")
        text = self.text_features(batch.classnames)
        with torch.no_grad(), self._autocast():
            image = self._encode_images(batch.images)
        return self._logits(image, text.to(image.device))

    def trainable_parameters(self) -> int:
        """The learned prompts (and couplings): nothing of the backbone is trained."""
        return 0 if self.prompts is None else sum(p.numel() for p in self.prompts.parameters())
