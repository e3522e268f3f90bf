"""Class prompts of the prompt learners: context initialisation, assembly, encoding, caches.

A learned class prompt is ``[SOS] [ctx_1 .. ctx_M] [class tokens] [.] [EOT] [pad]..`` (the
``end`` layout; CoOp also puts the class tokens in the ``middle`` of the context or in
``front`` of it). The text ``"{prompt_prefix} {class name}."`` is tokenised once per class
list; positions 1..M of its embeddings are replaced by the learned context, so words of the
prefix beyond M (MaPLe's "of a" of "a photo of a" with M = 2) stay fixed in the prompt::

    builder = PromptBuilder(backbone, tower, n_ctx=M, prefix="a photo of a")
    prompts = builder(classnames)                     # ClassPrompts: frozen SOS | suffix
    text = encode_class_prompts(tower, prompts, ctx)  # (C, D); gradients reach ctx

Context initialisation (:func:`initial_context`): with init words, their token embeddings
(CoOp: all of them, M = their token count; the deep learners: the first M); without, M
vectors drawn from N(0, std²) with the run's generator and the prefix "X X .. X".

:class:`PerClassList` memoises anything computed per list of class names (the frozen
prompt buffers, the text features of a fitted prompt), since one fitted adapter is scored
on base classes, novel classes and other datasets' classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Generic, TypeVar

import torch

from fewshot.prompting.text import TextTower, content_token_lengths, embed_tokens, encode_text_embeddings
from fewshot.types import ConfigError, FewshotError

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = [
    "POSITIONS",
    "ClassPrompts",
    "PerClassList",
    "PromptBuilder",
    "assemble_prompts",
    "build_class_prompts",
    "encode_class_prompts",
    "initial_context",
    "normal_prompts",
    "prompt_depth",
]

POSITIONS = ("end", "middle", "front")  # where the class tokens go relative to the context

T = TypeVar("T")


@dataclass
class ClassPrompts:
    """The frozen parts of the prompts of one list of class names.

    ``prefix`` + ``ctx`` + ``suffix`` is the ``end`` layout; ``order`` (C, L) maps every
    output position to a position of that layout, so ``middle`` and ``front`` are one gather.
    """

    tokens: torch.Tensor  # (C, L) ids; only the EOT position matters downstream
    prefix: torch.Tensor  # (C, 1, W): SOS
    suffix: torch.Tensor  # (C, L - 1 - M, W): fixed prefix words, class tokens, ".", EOT, padding
    order: torch.Tensor  # (C, L) int64
    position: str = "end"

    @property
    def classes(self) -> int:
        return int(self.prefix.shape[0])


class PerClassList(Generic[T]):
    """Values computed once per list of class names (base, novel, a target's classes)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, ...], T] = {}

    def get(self, classnames: Sequence[str], compute: Callable[[], T]) -> T:
        key = tuple(classnames)
        if key not in self._values:
            self._values[key] = compute()
        return self._values[key]

    def clear(self) -> None:
        self._values.clear()


def check_prompt_length(backbone: Backbone, tower: TextTower, classnames: Sequence[str], prefix: str) -> None:
    """SOS + the prefix words + a class name + "." + EOT must fit the text context."""
    words = int(content_token_lengths(tower, backbone.tokenize([prefix]))[0])
    lengths = content_token_lengths(tower, backbone.tokenize(list(classnames))).tolist()
    limit = backbone.context_length
    too_long = [n for n, k in zip(classnames, lengths, strict=True) if words + k + 3 > limit]
    if too_long:
        raise FewshotError(
            f"Prompts '{prefix} <class>.' for {too_long[:3]} exceed the text context length {limit}: "
            "use fewer context tokens (n_ctx), shorter init words (ctx_init) or shorter class names."
        )


def build_class_prompts(
    backbone: Backbone,
    tower: TextTower,
    classnames: Sequence[str],
    n_ctx: int,
    prompt_prefix: str,
    position: str = "end",
) -> ClassPrompts:
    """Tokenise ``"{prompt_prefix} {name}."`` per class and split its embeddings around the
    M = ``n_ctx`` learned positions 1..M."""
    if position not in POSITIONS:
        raise ConfigError(f"class_token_position must be one of {', '.join(POSITIONS)}, got {position!r}.")
    check_prompt_length(backbone, tower, classnames, prompt_prefix)
    tokens = backbone.tokenize([f"{prompt_prefix} {name}." for name in classnames])
    name_lens = content_token_lengths(tower, backbone.tokenize(list(classnames)))
    with torch.no_grad():
        embeds = embed_tokens(tower, tokens).float()
    order = torch.stack([_layout(tokens.shape[1], n_ctx, int(k), position) for k in name_lens])
    return ClassPrompts(tokens, embeds[:, :1], embeds[:, 1 + n_ctx :], order.to(embeds.device), position)


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
    if prompts.position == "end":
        return x
    order = prompts.order.unsqueeze(-1).expand(*lead, -1, -1, x.shape[-1])
    return x.gather(-2, order)


def encode_class_prompts(
    tower: TextTower,
    prompts: ClassPrompts,
    ctx: torch.Tensor,
    *,
    deep_prompts: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """Unnormalised text features of the class prompts under a learned context.

    ``ctx`` is (M, W), shared by every class -> (C, D); (C, M, W), one per class -> (C, D);
    or (B, C, M, W), one per (image, class) as CoCoOp builds it -> (B, C, D). Gradients
    reach ``ctx`` (and ``deep_prompts``, see :func:`encode_text_embeddings`).
    """
    classes = prompts.classes
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(classes, -1, -1)
    if ctx.dim() not in (3, 4) or ctx.shape[-3] != classes:
        raise ValueError(f"context {tuple(ctx.shape)} does not fit {classes} class prompts.")
    embeddings = assemble_prompts(prompts, ctx)
    lead = embeddings.shape[:-3]
    tokens = prompts.tokens.repeat(math.prod(lead), 1)  # image-major, like the embeddings
    text = encode_text_embeddings(tower, embeddings.flatten(0, -3), tokens, deep_prompts=deep_prompts)
    return text.view(*lead, classes, -1)


@dataclass
class PromptBuilder:
    """The frozen class-prompt buffers of a fitted context, built once per class list."""

    backbone: Backbone
    tower: TextTower
    n_ctx: int
    prefix: str
    position: str = "end"
    _built: PerClassList[ClassPrompts] = field(default_factory=PerClassList, repr=False)

    def __call__(self, classnames: Sequence[str]) -> ClassPrompts:
        return self._built.get(
            classnames,
            lambda: build_class_prompts(
                self.backbone, self.tower, classnames, self.n_ctx, self.prefix, self.position
            ),
        )


# ------------------------------------------------------------------------------------------
# Initialisation


def initial_context(
    backbone: Backbone,
    tower: TextTower,
    ctx_init: str,
    n_ctx: int | None,
    *,
    init_std: float,
    generator: torch.Generator,
    classes: int | None = None,
    method: str = "prompt learner",
) -> tuple[torch.Tensor, str]:
    """The initial context and the prompt prefix to tokenise class prompts with.

    With ``ctx_init`` words: the token embeddings of their first ``n_ctx`` tokens (all of
    them when ``n_ctx`` is None) and the words as the prefix. Otherwise ``n_ctx`` vectors
    drawn from N(0, init_std²) with ``generator`` and the prefix "X X .. X". Shape (M, W),
    or (classes, M, W) for class-specific contexts (each class starts from the same words).
    """
    width = int(tower.token_embedding.weight.shape[1])
    if not ctx_init.strip():
        if n_ctx is None or n_ctx < 1:
            raise ConfigError(f"{method} needs at least one context token, got n_ctx={n_ctx}.")
        shape = (classes, n_ctx, width) if classes is not None else (n_ctx, width)
        return torch.empty(shape).normal_(0.0, init_std, generator=generator), " ".join(["X"] * n_ctx)
    words = " ".join(ctx_init.replace("_", " ").split())
    tokens = backbone.tokenize([words])
    available = int(content_token_lengths(tower, tokens)[0])
    take = available if n_ctx is None else n_ctx
    if not 1 <= take <= available:
        raise ConfigError(
            f"{method}: ctx_init {words!r} has {available} tokens, fewer than the {take} context "
            f"tokens asked for. Use at most {available} context tokens, longer init words, or "
            "ctx_init='' for a random init."
        )
    with torch.no_grad():
        vectors = embed_tokens(tower, tokens)[0, 1 : 1 + take].float().cpu()
    shared = vectors.expand(classes, -1, -1) if classes is not None else vectors
    return shared.clone(), words


def normal_prompts(
    count: int, tokens: int, width: int, std: float, generator: torch.Generator
) -> list[torch.Tensor]:
    """``count`` prompts (tokens, width) drawn from N(0, std²) with ``generator``."""
    return [torch.empty(tokens, width).normal_(0.0, std, generator=generator) for _ in range(count)]


def prompt_depth(depth: int, layers: int) -> int:
    """Layers that get prompts: the configured depth, capped at the tower's number of blocks
    (a deeper setting has nothing to prompt; the originals leave such prompts unused)."""
    return min(depth, layers)
