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

from fewshot.prompting._blocks import check_deep
from fewshot.prompting._shared import SharedPrefixPlan, blocks_supported, encode_shared_prefix
from fewshot.prompting.text import (
    TextTower,
    content_token_lengths,
    embed_tokens,
    encode_text_embeddings,
    eot_index,
    project_text,
)
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
    "shared_prefix_plan",
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
    plans: dict[tuple[str, int | None, bool], SharedPrefixPlan | None] = field(
        default_factory=dict, repr=False, compare=False
    )  # per tower pooling and mask: how the prompts split into a shared prefix and suffixes

    @property
    def classes(self) -> int:
        return int(self.prefix.shape[0])

    @property
    def n_ctx(self) -> int:
        """M, the learned context positions 1..M."""
        return int(self.tokens.shape[1] - 1 - self.suffix.shape[1])


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

    Where the classes share their first positions (:func:`shared_prefix_plan`: class tokens
    at the ``end`` and one context for all classes, or for all classes of an image), those
    positions are encoded once per distinct context (:mod:`fewshot.prompting._shared`);
    otherwise every prompt runs in full. Both give the same features up to float rounding.
    """
    classes = prompts.classes
    if ctx.dim() == 2:
        ctx = ctx.unsqueeze(0).expand(classes, -1, -1)
    if ctx.dim() not in (3, 4) or ctx.shape[-3] != classes:
        raise ValueError(f"context {tuple(ctx.shape)} does not fit {classes} class prompts.")
    plan = shared_prefix_plan(tower, prompts, ctx, deep_prompts)
    if plan is not None:
        return _encode_shared(tower, prompts, ctx, plan, deep_prompts)
    embeddings = assemble_prompts(prompts, ctx)
    lead = embeddings.shape[:-3]
    tokens = prompts.tokens.repeat(math.prod(lead), 1)  # image-major, like the embeddings
    text = encode_text_embeddings(tower, embeddings.flatten(0, -3), tokens, deep_prompts=deep_prompts)
    return text.view(*lead, classes, -1)


def shared_prefix_plan(
    tower: TextTower,
    prompts: ClassPrompts,
    ctx: torch.Tensor,
    deep_prompts: Sequence[torch.Tensor] = (),
) -> SharedPrefixPlan | None:
    """How :func:`encode_class_prompts` splits the prompts into one shared prefix and
    per-class suffixes, or None where it runs every prompt in full instead.

    ``ctx`` as :func:`encode_class_prompts` takes it. None when: the class tokens are not at
    the ``end``; fewer than two classes; the classes do not share one context (``ctx``
    (C, M, W) or (B, C, M, W) that is not an expand over the classes, as a class-specific
    context); a tower that is not causal or does not pool at the EOT; a block that is not
    open_clip's plain ``ResidualAttentionBlock``; per-prompt (3-D) deep prompts, or deep
    prompts reaching past the prefix; a prefix of P <= 1 positions; where sharing would not
    pay for its extra passes through the blocks on this device
    (:meth:`~fewshot.prompting._shared.SharedPrefixPlan.pays`). The split itself (P, the
    suffix groups) is computed once per prompts and tower pooling, and kept.
    """
    contexts = _shared_contexts(ctx)
    if contexts is None or any(p.dim() != 2 for p in deep_prompts):
        return None
    key = (tower.pool_type, tower.eos_id, tower.causal)
    if key not in prompts.plans:
        prompts.plans[key] = _plan(tower, prompts)
    plan = prompts.plans[key]
    if plan is None or not blocks_supported(tower.transformer):
        return None
    width = int(tower.positional_embedding.shape[-1])
    deep = check_deep(deep_prompts, tower.transformer, width, "text") if deep_prompts else 0
    return plan if 1 + deep <= plan.length and plan.pays(int(contexts.shape[0])) else None


def _shared_contexts(ctx: torch.Tensor) -> torch.Tensor | None:
    """The distinct contexts (G, M, W) when every class of each leading index shares one
    ((M, W), or an expand over the class dimension of (C, M, W) or (B, C, M, W)), else None."""
    if ctx.dim() == 2:
        return ctx.unsqueeze(0)
    grid = ctx if ctx.dim() == 4 else ctx.unsqueeze(0)
    if grid.shape[1] > 1 and grid.stride(1) != 0:
        return None
    return grid[:, 0]


def _plan(tower: TextTower, prompts: ClassPrompts) -> SharedPrefixPlan | None:
    """The split of these prompts for this tower's pooling (see :func:`shared_prefix_plan`)."""
    if prompts.position != "end" or prompts.classes < 2 or not _causal_eot_pooling(tower):
        return None
    eot = eot_index(tower, prompts.tokens).tolist()
    same = (prompts.suffix == prompts.suffix[:1]).all(dim=-1).all(dim=0)  # per suffix position
    words = int(same.int().cumprod(dim=0).sum())  # fixed words after the context, in every prompt
    length = min(1 + prompts.n_ctx + words, min(eot))  # the EOT always stays in the suffix
    if length <= 1 or length < 1 + prompts.n_ctx:
        return None
    return SharedPrefixPlan.build(length, eot, prompts.suffix.device)


def _causal_eot_pooling(tower: TextTower) -> bool:
    """True for open_clip's causal mask (0 on and below the diagonal, -inf above) and
    pooling at the EOT token."""
    if tower.attn_mask is None or tower.pool_type not in ("argmax", "eos"):
        return False
    size = tower.attn_mask.shape[-1]
    causal = torch.full((size, size), float("-inf")).triu(1)
    return torch.equal(tower.attn_mask.detach().float().cpu(), causal)


def _encode_shared(
    tower: TextTower,
    prompts: ClassPrompts,
    ctx: torch.Tensor,
    plan: SharedPrefixPlan,
    deep_prompts: Sequence[torch.Tensor],
) -> torch.Tensor:
    """The shared-prefix path of :func:`encode_class_prompts`: (C, D), or (B, C, D) for 4-D ``ctx``."""
    contexts = _shared_contexts(ctx)
    assert contexts is not None
    groups, words = contexts.shape[0], plan.length - 1 - prompts.n_ctx
    sos = prompts.prefix[:1].expand(groups, -1, -1)
    prefix = torch.cat([sos, contexts, prompts.suffix[:1, :words].expand(groups, -1, -1)], dim=1)
    positional = tower.positional_embedding.to(tower.cast_dtype)
    hidden = encode_shared_prefix(
        tower.transformer, positional, prefix, prompts.suffix[:, words:], plan, deep_prompts
    )
    text = project_text(tower.text_projection, tower.ln_final(hidden))
    return text if ctx.dim() == 4 else text[0]


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
