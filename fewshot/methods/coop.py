"""CoOp: learned context vectors in place of the hand-written words of the prompt.

Paper: Zhou, Yang, Loy, Liu, "Learning to Prompt for Vision-Language Models", IJCV 2022
(arXiv 2109.01134). Official code: https://github.com/KaiyangZhou/CoOp (trainers/coop.py,
configs/trainers/CoOp/*.yaml, scripts/coop/main.sh). Spec: METHODS.md §4.

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
  "a photo of a", 50 epochs (METHODS.md §1.4).
- ImageNet uses 50 epochs at every shot count (and ``vit_b16_ep50_ctxv1`` in base2novel),
  but a preset sees only (protocol, shots): set ``--set epochs=50`` for ImageNet.

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

from fewshot.methods._training import SGDConfig, clip_logits, sgd_with_schedule, train_batches
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.prompting import (
    TextTower,
    content_token_lengths,
    embed_tokens,
    encode_text_embeddings,
    text_tower,
)
from fewshot.types import ConfigError, FewshotError

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = [
    "ClassPrompts",
    "CoOp",
    "CoOpConfig",
    "PromptLearner",
    "assemble_prompts",
    "build_class_prompts",
    "initial_context",
]

POSITIONS = ("end", "middle", "front")


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
    def preset(cls, protocol: str, shots: int) -> dict[str, Any]:
        """Epochs and context init of the official configs (see the module docstring)."""
        if protocol == "base2novel":
            return {"n_ctx": 4, "ctx_init": "a photo of a", "epochs": 200}
        if protocol in ("cross-dataset", "domain-generalization"):
            return {"n_ctx": 4, "ctx_init": "a photo of a", "epochs": 50}
        return {"epochs": 50 if shots <= 1 else 100 if shots <= 4 else 200}


@dataclass
class ClassPrompts:
    """The frozen parts of the prompts of one list of class names.

    ``prefix`` + ``ctx`` + ``suffix`` is the ``end`` layout; ``order`` (C, L) maps every
    output position to a position of that layout, so ``middle`` and ``front`` are one gather.
    """

    tokens: torch.Tensor  # (C, L) ids; only the EOT position matters downstream
    prefix: torch.Tensor  # (C, 1, W): SOS
    suffix: torch.Tensor  # (C, L - 1 - M, W): class tokens, ".", EOT, padding
    order: torch.Tensor  # (C, L) int64


def build_class_prompts(
    backbone: Backbone, tower: TextTower, classnames: list[str], n_ctx: int, prompt_prefix: str, position: str
) -> ClassPrompts:
    """Tokenise ``"{prompt_prefix} {name}."`` per class and split its embeddings."""
    tokens = backbone.tokenize([f"{prompt_prefix} {name}." for name in classnames])
    name_lens = content_token_lengths(tower, backbone.tokenize(classnames))
    too_long = [
        n for n, k in zip(classnames, name_lens.tolist(), strict=True) if n_ctx + k + 3 > tokens.shape[1]
    ]
    if too_long:
        raise FewshotError(
            f"CoOp prompts for {too_long[:3]} exceed the text context length {tokens.shape[1]} "
            f"with {n_ctx} context tokens: use a smaller n_ctx."
        )
    with torch.no_grad():
        embeds = embed_tokens(tower, tokens).float()
    order = torch.stack([_layout(tokens.shape[1], n_ctx, int(k), position) for k in name_lens])
    return ClassPrompts(tokens, embeds[:, :1], embeds[:, 1 + n_ctx :], order.to(embeds.device))


def _layout(length: int, n_ctx: int, name_len: int, position: str) -> torch.Tensor:
    """Positions of the ``end`` layout [SOS, ctx (M), name (n), rest] in the wanted order."""
    sos, ctx = [0], list(range(1, 1 + n_ctx))
    name = list(range(1 + n_ctx, 1 + n_ctx + name_len))
    rest = list(range(1 + n_ctx + name_len, length))
    if position == "front":
        return torch.tensor(sos + name + ctx + rest)
    if position == "middle":
        half = n_ctx // 2
        return torch.tensor(sos + ctx[:half] + name + ctx[half:] + rest)
    return torch.tensor(sos + ctx + name + rest)


def assemble_prompts(prompts: ClassPrompts, ctx: torch.Tensor) -> torch.Tensor:
    """Prompt embeddings (..., C, L, W) from one context per class, ``ctx`` (..., C, M, W).

    Leading dimensions (e.g. CoCoOp's one context per image) share the frozen prefix and
    suffix of the C classes.
    """
    lead = ctx.shape[:-3]
    prefix = prompts.prefix.expand(*lead, -1, -1, -1)
    suffix = prompts.suffix.expand(*lead, -1, -1, -1)
    x = torch.cat([prefix, ctx, suffix], dim=-2)  # the "end" layout
    order = prompts.order.unsqueeze(-1).expand(*lead, -1, -1, x.shape[-1])
    return x.gather(-2, order)


def initial_context(
    backbone: Backbone,
    tower: TextTower,
    ctx_init: str,
    n_ctx: int,
    *,
    init_std: float,
    generator: torch.Generator,
    classes: int | None = None,
) -> tuple[torch.Tensor, str]:
    """The initial context and the prompt prefix to tokenise class prompts with.

    With ``ctx_init`` words: their token embeddings (M = their token count) and the words as
    the prefix. Otherwise M = ``n_ctx`` vectors drawn from N(0, init_std²) with ``generator``
    and the prefix "X X .. X". Shape (M, W), or (classes, M, W) for class-specific contexts.
    """
    width = tower.token_embedding.weight.shape[1]
    if ctx_init.strip():
        init = " ".join(ctx_init.replace("_", " ").split())
        tokens = backbone.tokenize([init])
        n_words = int(content_token_lengths(tower, tokens)[0])
        with torch.no_grad():
            vectors = embed_tokens(tower, tokens)[0, 1 : 1 + n_words].float().cpu()
        shared = vectors.expand(classes, -1, -1).clone() if classes is not None else vectors.clone()
        return shared, init
    shape = (classes, n_ctx, width) if classes is not None else (n_ctx, width)
    return torch.empty(shape).normal_(0.0, init_std, generator=generator), " ".join(["X"] * n_ctx)


class PromptLearner(nn.Module):
    """The learned context: (M, W) shared, or (C, M, W) class-specific."""

    def __init__(self, ctx: torch.Tensor) -> None:
        super().__init__()
        self.ctx = nn.Parameter(ctx.float())

    def forward(self, prompts: ClassPrompts, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Prompt embeddings (C, L, W); ``classes`` picks class-specific contexts."""
        if self.ctx.dim() == 2:
            ctx = self.ctx.unsqueeze(0).expand(prompts.prefix.shape[0], -1, -1)
        else:
            ctx = self.ctx if classes is None else self.ctx[classes]
        return assemble_prompts(prompts, ctx)


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
        self._prompt_prefix = ""
        self._autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
        self._tower: TextTower | None = None
        self._prompts: dict[tuple[str, ...], ClassPrompts] = {}
        self._text: dict[tuple[str, ...], torch.Tensor] = {}

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
        self._prompts.clear()
        self._text.clear()
        self.learner = PromptLearner(self._init_context(ctx)).to(ctx.device)
        prompts = self._class_prompts(self.classnames)
        if cfg.epochs == 0:
            return
        optimizer, scheduler = sgd_with_schedule(self.learner.parameters(), cfg)
        for epoch in ctx.epochs(cfg.epochs, type(self).__name__):
            for features, labels in train_batches(ctx, epoch, cfg.batch_size):
                with ctx.autocast():
                    text = self._encode(prompts)
                    logits = self._logits(features, text)
                loss = self._loss(logits, labels, text)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            scheduler.step()  # Dassl steps the schedule once per epoch

    def _loss(self, logits: torch.Tensor, labels: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        """Training loss of one batch: cross-entropy (``text``: the C unnormalised class text
        features of this step, for methods that regularise them, e.g. KgCoOp)."""
        return F.cross_entropy(logits.float(), labels)

    def _init_context(self, ctx: FitContext) -> torch.Tensor:
        """Initial context (M, W) or (C, M, W); sets the prompt prefix used for tokenising."""
        cfg, tower = self.config, self._tower
        assert tower is not None
        vectors, self._prompt_prefix = initial_context(
            ctx.backbone,
            tower,
            cfg.ctx_init,
            cfg.n_ctx,
            init_std=cfg.init_std,
            generator=ctx.generator,
            classes=len(ctx.classnames) if cfg.class_specific else None,
        )
        return vectors

    def _class_prompts(self, classnames: list[str]) -> ClassPrompts:
        """Prefix/suffix buffers of a class list, built once per list (base, novel, targets)."""
        key = tuple(classnames)
        if key not in self._prompts:
            assert self.backbone is not None
            tower = text_tower(self.backbone.model)
            self._prompts[key] = build_class_prompts(
                self.backbone,
                tower,
                classnames,
                self.n_ctx,
                self._prompt_prefix,
                self.config.class_token_position,
            )
        return self._prompts[key]

    def _encode(self, prompts: ClassPrompts, classes: torch.Tensor | None = None) -> torch.Tensor:
        """Unnormalised text features (C, D) of the learned prompts; gradients reach the context."""
        assert self.learner is not None and self._tower is not None
        embeddings = self.learner(prompts, classes)
        return encode_text_embeddings(self._tower, embeddings, prompts.tokens)

    def _logits(self, features: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
        assert self.backbone is not None
        return clip_logits(self.backbone.logit_scale, features, text)

    def text_features(self, classnames: list[str]) -> torch.Tensor:
        """L2-normalised text features (C, D) of the learned prompts for ``classnames``."""
        key = tuple(classnames)
        if key not in self._text:  # the context is fixed after fit: encode each list once
            classes = self._class_indices(classnames) if self.config.class_specific else None
            with torch.no_grad(), self._autocast():
                text = self._encode(self._class_prompts(classnames), classes)
            self._text[key] = F.normalize(text.float(), dim=-1)
        return self._text[key]

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
