"""What the deep prompt learners (IVLP, MaPLe, PromptSRC) share.

- :class:`DeepPromptConfig`: the training settings every one of them has (Dassl SGD,
  cosine with one constant warm-up epoch, batch 4, the context init words).
- :class:`DeepPromptAdapter`: fit and predict with learned prompts in both towers. Every
  training image goes through the prompted image encoder (``Needs.IMAGES``), and the text
  features of all training classes are recomputed at every step, as in the originals. A
  subclass builds its prompt module and says which prompts each tower gets; PromptSRC adds
  its losses and the prompt aggregation through the hooks ``_prepare``, ``_loss``,
  ``_end_epoch`` and ``_end_fit``.
- :func:`context_vectors`, :func:`normal_prompts` (and ``_training.seeded_linear``): initialisation
  with the run's generator (never the global RNG).

The class prompt is ``"{ctx_init} {class name}."`` tokenised once per class list, with the
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

from fewshot.methods._training import SGDConfig, clip_logits, sgd_with_schedule
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.methods.coop import ClassPrompts, build_class_prompts
from fewshot.prompting import (
    TextTower,
    VisionTower,
    content_token_lengths,
    embed_tokens,
    encode_images_prompted,
    encode_text_embeddings,
    text_tower,
    vision_tower,
)
from fewshot.types import ConfigError, FewshotError

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = [
    "DeepPromptAdapter",
    "DeepPromptConfig",
    "context_vectors",
    "normal_prompts",
]


@dataclass(frozen=True)
class DeepPromptConfig(SGDConfig):
    """Training settings shared by the deep prompt learners (Dassl SGD; batch 4, 20 epochs,
    lr 0.0025 as PromptSRC's and IVLP's configs; deep prompts ~ N(0, init_std²))."""

    epochs: int = 20
    lr: float = 0.0025
    batch_size: int = 4
    ctx_init: str = "a photo of a"  # init words of the layer-0 text context; "" = random


# ------------------------------------------------------------------------------------------
# Initialisation


def context_vectors(
    backbone: Backbone,
    tower: TextTower,
    ctx_init: str,
    n_ctx: int,
    *,
    init_std: float,
    generator: torch.Generator,
    method: str,
) -> tuple[torch.Tensor, str]:
    """The layer-0 text context (n_ctx, W) and the prompt prefix to tokenise classes with.

    With init words: the token embeddings of their first ``n_ctx`` tokens, and the words
    themselves as the prefix (so with fewer context tokens than words, the remaining words
    stay fixed in the prompt). Without: N(0, init_std²) vectors and the prefix "X X .. X".
    """
    if n_ctx < 1:
        raise ConfigError(f"{method} needs at least one text context token, got {n_ctx}.")
    if not ctx_init.strip():
        width = int(tower.token_embedding.weight.shape[1])
        return normal_prompts(1, n_ctx, width, init_std, generator)[0], " ".join(["X"] * n_ctx)
    words = " ".join(ctx_init.replace("_", " ").split())
    tokens = backbone.tokenize([words])
    available = int(content_token_lengths(tower, tokens)[0])
    if n_ctx > available:
        raise ConfigError(
            f"{method}: ctx_init {words!r} has {available} tokens, fewer than the {n_ctx} context "
            f"tokens asked for. Use at most {available} context tokens, longer init words, or "
            "ctx_init='' for a random init."
        )
    with torch.no_grad():
        vectors = embed_tokens(tower, tokens)[0, 1 : 1 + n_ctx].float().cpu().clone()
    return vectors, words


def normal_prompts(
    count: int, tokens: int, width: int, std: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """``count`` prompts (tokens, width) drawn from N(0, std²) with ``generator``."""
    return [torch.empty(tokens, width).normal_(0.0, std, generator=generator) for _ in range(count)]


def prompt_depth(depth: int, layers: int) -> int:
    """Layers that get prompts: the configured depth, capped at the tower's number of blocks
    (a deeper setting has nothing to prompt; the originals leave such prompts unused)."""
    return min(depth, layers)


# ------------------------------------------------------------------------------------------
# The adapter


class DeepPromptAdapter(Adapter):
    """Learned prompts in both towers, trained end to end on augmented support images."""

    needs = Needs.IMAGES  # query images pass through the prompted image encoder
    supports_novel = True
    method: ClassVar[str] = "deep prompts"  # name used in messages and progress bars
    config: DeepPromptConfig

    def __init__(self, config: DeepPromptConfig | None = None) -> None:
        super().__init__(config)
        self.backbone: Backbone | None = None
        self.prompts: nn.Module | None = None
        self._text_tower: TextTower | None = None
        self._vision_tower: VisionTower | None = None
        self._prompt_prefix = ""
        self._autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
        self._class_prompts: dict[tuple[str, ...], ClassPrompts] = {}
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

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
        self._class_prompts.clear()
        self._text.clear()
        self.prompts = self._build_prompts(ctx, self._text_tower, self._vision_tower).to(ctx.device)
        prompts = self._prompts_for(ctx.classnames)
        self._prepare(ctx, prompts)
        if cfg.epochs == 0:
            return
        optimizer, scheduler = sgd_with_schedule(self.prompts.parameters(), cfg)
        drop_last = len(ctx.train_images) >= cfg.batch_size  # as Dassl's train loader
        for epoch in ctx.epochs(cfg.epochs, self.method):
            loader = ctx.train_images.loader(
                cfg.batch_size, augment=True, shuffle=True, generator=ctx.generator, drop_last=drop_last
            )
            for images, labels in loader:
                with ctx.autocast():
                    loss = self._loss(images.to(ctx.device), labels.to(ctx.device), prompts)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()  # Dassl steps the schedule once per epoch
            self._end_epoch(epoch)
        self._end_fit()

    # -- encoders --------------------------------------------------------------------------

    def _prompts_for(self, classnames: list[str]) -> ClassPrompts:
        """Frozen SOS / class-name buffers of a class list, built once per list."""
        key = tuple(classnames)
        if key not in self._class_prompts:
            assert self.backbone is not None and self._text_tower is not None
            self._check_prompt_length(classnames)
            n_ctx = int(self._text_prompts()[0].shape[0])
            self._class_prompts[key] = build_class_prompts(
                self.backbone, self._text_tower, list(classnames), n_ctx, self._prompt_prefix, "end"
            )
        return self._class_prompts[key]

    def _check_prompt_length(self, classnames: list[str]) -> None:
        """SOS + prefix words + class name + "." + EOT must fit the text context."""
        assert self.backbone is not None and self._text_tower is not None
        tower, tokenize = self._text_tower, self.backbone.tokenize
        prefix = int(content_token_lengths(tower, tokenize([self._prompt_prefix]))[0])
        lengths = content_token_lengths(tower, tokenize(list(classnames))).tolist()
        limit = self.backbone.context_length
        too_long = [n for n, k in zip(classnames, lengths, strict=True) if prefix + k + 3 > limit]
        if too_long:
            raise FewshotError(
                f"{self.method} prompts '{self._prompt_prefix} <class>.' for {too_long[:3]} exceed the "
                f"text context length {limit}: use shorter class names or shorter ctx_init words."
            )

    def _encode_text(self, prompts: ClassPrompts) -> torch.Tensor:
        """Unnormalised text features (C, D) of the prompted class prompts."""
        assert self._text_tower is not None
        ctx, deep = self._text_prompts()
        classes = prompts.prefix.shape[0]
        embeddings = torch.cat([prompts.prefix, ctx.expand(classes, -1, -1), prompts.suffix], dim=1)
        return encode_text_embeddings(self._text_tower, embeddings, prompts.tokens, deep_prompts=deep)

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
        key = tuple(classnames)
        if key not in self._text:  # the prompts are fixed after fit: encode each list once
            with torch.no_grad(), self._autocast():
                text = self._encode_text(self._prompts_for(list(classnames)))
            self._text[key] = F.normalize(text.float(), dim=-1)
        return self._text[key]

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
