"""CoOp: learned context vectors in place of the hand-written words of the prompt.

Paper: Zhou, Yang, Loy, Liu, "Learning to Prompt for Vision-Language Models", IJCV 2022
(arXiv 2109.01134). Official code: https://github.com/KaiyangZhou/CoOp (trainers/coop.py,
configs/trainers/CoOp/*.yaml, scripts/coop/main.sh). Spec: docs/methods.md#coop.

Per class c the prompt is ``[SOS][ctx_1..ctx_M][class tokens][.][EOT][pad]`` (class token
at the ``end``; ``middle`` splits the context in two halves around the class tokens,
``front`` puts the class tokens first). Only the M context vectors (one shared set, or one
per class with ``class_specific``) are trained, with cross-entropy on
logit_scale · cos(image feature, text feature), both encoders frozen. SGD (lr 0.002,
momentum 0.9, weight decay 5e-4), batch 32, cosine schedule with one constant warm-up epoch
at 1e-5, the last-epoch model is kept (no selection).

Presets (``CoOpConfig.preset``):
- ``fewshot``: 1 shot -> 50 epochs (``vit_b16_ep50``), 2 and 4 shots -> 100
  (``vit_b16_ep100``), 8 and 16 shots -> 200 (``vit_b16``); M = 16, random init.
- ``base2novel``: ``vit_b16_ctxv1`` as CoCoOp ran the CoOp baseline: M = 4 initialised from
  "a photo of a", 200 epochs.
- ``cross-dataset`` and ``domain-generalization``: ``vit_b16_ep50_ctxv1``: M = 4 from
  "a photo of a", 50 epochs (docs/methods.md#cross-dataset-transfer).
- ImageNet: 50 epochs at every shot count (COOP.md: "for ImageNet, we use
  configs/trainers/CoOp/*_ep50.yaml for all settings"), and ``vit_b16_ep50_ctxv1`` in
  base2novel (scripts/cocoop/base2new_train.sh, KaiyangZhou/CoOp@ff61507c).

Deviations from the official code:
- Training runs by default on cached image features of V augmented views per support image
  (epoch e uses view e mod V: one augmentation per image per epoch, as the original loader
  draws, but the same V augmentations recur). ``--aug-views online`` encodes freshly
  augmented images every step, as the original. CoOp's image encoder is frozen and sees no
  prompt, so both paths train the same model on the same kind of data.
- fp32 context vectors under autocast (the original keeps CLIP and the context in fp16).
- With ``ctx_init``, M is the number of *tokens* of the init text (the original counts
  words, which differs only when a word splits into several BPE tokens).
- ``class_specific`` with ``ctx_init`` gives every class its own context, each initialised
  from the init words (the original silently ignores CSC when ``ctx_init`` is set).
- A class-specific context cannot be used for class names it was not trained on; such an
  adapter reports ``supports_novel = False``.
- Prompts longer than the text tower's context length are an error instead of being
  silently truncated.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods._training import SGDConfig, clip_logits, fit_sgd, train_batches
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.prompting import (
    POSITIONS,
    ClassPrompts,
    PerClassList,
    PromptBuilder,
    TextTower,
    encode_class_prompts,
    initial_context,
    text_tower,
)
from fewshot.types import AdapterConfig, ConfigError, FewshotError
from fewshot.workload import StepCost, prompts_with

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = ["CoOp", "CoOpConfig", "PromptLearner"]


@dataclass(frozen=True)
class CoOpConfig(SGDConfig):
    """CoOp hyper-parameters (defaults: configs/trainers/CoOp/vit_b16.yaml; training settings
    from :class:`SGDConfig`: 200 epochs, lr 0.002, batch 32, ...)."""

    n_ctx: int = 16  # context length M; ignored when ctx_init is set (M = its token count)
    ctx_init: str = ""  # "" = random N(0, init_std²); else init words, e.g. "a photo of a"
    class_specific: bool = False  # CSC: one context per class
    class_token_position: str = "end"  # "end" | "middle" | "front"

    def __post_init__(self) -> None:
        if self.class_token_position not in POSITIONS:
            raise ConfigError(
                f"coop class_token_position must be one of {', '.join(POSITIONS)}, "
                f"got {self.class_token_position!r}."
            )
        if self.n_ctx < 1:
            raise ConfigError(f"coop needs n_ctx >= 1, got {self.n_ctx}.")
        self.check_training("coop")

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """Epochs and context init of the official configs (see the module docstring)."""
        imagenet = dataset == "imagenet"
        if protocol == "base2novel":
            return {"n_ctx": 4, "ctx_init": "a photo of a", "epochs": 50 if imagenet else 200}
        if protocol in ("cross-dataset", "domain-generalization"):
            return {"n_ctx": 4, "ctx_init": "a photo of a", "epochs": 50}
        return {"epochs": 50 if imagenet or shots <= 1 else 100 if shots <= 4 else 200}


class PromptLearner(nn.Module):
    """The learned context: (M, W) shared, or (C, M, W) class-specific."""

    def __init__(self, ctx: torch.Tensor) -> None:
        super().__init__()
        self.ctx = nn.Parameter(ctx.float())

    def context(self, classes: torch.Tensor | None = None) -> torch.Tensor:
        """The context of every class: (M, W) shared, or the rows ``classes`` picks of a
        class-specific (C, M, W) one."""
        if self.ctx.dim() == 2 or classes is None:
            return self.ctx
        return self.ctx[classes]


class CoOp(Adapter):
    """Context Optimization: a learned prompt context shared by (or specific to) classes."""

    config_cls = CoOpConfig
    needs = Needs.FEATURES  # the image encoder is frozen and unprompted: cached features suffice
    supports_novel = True
    config: CoOpConfig

    def __init__(self, config: CoOpConfig | None = None) -> None:
        super().__init__(config)
        # A class-specific context has nothing to offer class names it was not trained on;
        # the runner reads supports_novel from the instance, so the override takes effect.
        self.supports_novel = not self.config.class_specific
        self.backbone: Backbone | None = None
        self.learner: PromptLearner | None = None
        self.classnames: list[str] = []
        self.prompts_for: PromptBuilder | None = None  # class names -> frozen prompt buffers
        self._autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
        self._tower: TextTower | None = None
        self._text: PerClassList[torch.Tensor] = PerClassList()

    @classmethod
    def step_cost(cls, config: AdapterConfig, classnames: list[str], online: bool) -> StepCost:
        """Every class prompt once per step; a batch of images when augmenting online."""
        assert isinstance(config, CoOpConfig)
        prompts = prompts_with(config.ctx_init, config.n_ctx, classnames)
        return StepCost(prompts, images=config.batch_size if online else 0, reads_views=True)

    @property
    def n_ctx(self) -> int:
        """Context length M (the init text's token count when ``ctx_init`` is set)."""
        if self.learner is None:
            raise FewshotError("CoOp has no context before fit(ctx).")
        return int(self.learner.ctx.shape[-2])

    def fit(self, ctx: FitContext) -> None:
        """Train the context on the support set for ``epochs`` epochs; keep the last one."""
        cfg = self.config
        self.backbone, self.classnames, self._autocast = ctx.backbone, list(ctx.classnames), ctx.autocast
        self._tower = text_tower(ctx.backbone.model)
        self._text.clear()
        vectors, prefix = initial_context(
            ctx.backbone,
            self._tower,
            cfg.ctx_init,
            None if cfg.ctx_init.strip() else cfg.n_ctx,  # with init words, M = their token count
            init_std=cfg.init_std,
            generator=ctx.generator,
            classes=len(ctx.classnames) if cfg.class_specific else None,
            method="coop",
        )
        self.learner = PromptLearner(vectors).to(ctx.device)
        self.prompts_for = PromptBuilder(
            ctx.backbone, self._tower, self.n_ctx, prefix, cfg.class_token_position
        )
        prompts = self.prompts_for(self.classnames)
        fit_sgd(
            ctx,
            self.learner.parameters(),
            cfg,
            type(self).__name__,
            lambda epoch: train_batches(ctx, epoch, cfg.batch_size),
            lambda features, labels: self._batch_loss(features, labels, prompts),
        )

    def _batch_loss(
        self, features: torch.Tensor, labels: torch.Tensor, prompts: ClassPrompts
    ) -> torch.Tensor:
        text = self._encode(prompts)
        return self._loss(self._logits(features, text), labels, text)

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Training loss of one batch: cross-entropy (``text``: the C unnormalised class text
        features of this step, for methods that regularise them, e.g. KgCoOp)."""
        return F.cross_entropy(logits.float(), labels)

    def _encode(self, prompts: ClassPrompts, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised text features (C, D) of the learned prompts; gradients reach the context."""
        assert self.learner is not None and self._tower is not None
        return encode_class_prompts(self._tower, prompts, self.learner.context(classes))

    def _logits(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        assert self.backbone is not None
        return clip_logits(self.backbone.logit_scale, features, text)

    def text_features(self, classnames: list[str]) -> torch.Tensor:
        """L2-normalised text features (C, D) of the learned prompts for ``classnames``."""
        return self._text.get(classnames, lambda: self._frozen_text(classnames))

    def _frozen_text(self, classnames: list[str]) -> torch.Tensor:
        """The fitted context is fixed: each class list is encoded once, without gradients."""
        assert self.prompts_for is not None
        classes = self._class_indices(classnames) if self.config.class_specific else None
        with torch.no_grad(), self._autocast():
            text = self._encode(self.prompts_for(classnames), classes)
        return F.normalize(text.float(), dim=-1)

    def _class_indices(self, classnames: list[str]) -> torch.Tensor:
        unknown = [name for name in classnames if name not in self.classnames]
        if unknown:
            raise FewshotError(
                f"CoOp with class_specific=True has no context for unseen classes {unknown[:5]}; "
                "train with class_specific=False to classify new class names."
            )
        return torch.tensor([self.classnames.index(name) for name in classnames])

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """logit_scale · cos(image, learned prompt of each class in ``batch.classnames``)."""
        if self.learner is None:
            raise FewshotError("CoOp.predict called before fit(): call fit(ctx) first.")
        if batch.features is None:
            raise FewshotError("CoOp needs image features in the QueryBatch (Needs.FEATURES).")
        text = self.text_features(batch.classnames).to(batch.features.device)
        return self._logits(batch.features, text)

    def trainable_parameters(self) -> int:
        """The context size: M·W, or C·M·W with class-specific contexts."""
        return 0 if self.learner is None else self.learner.ctx.numel()
