"""Shared machinery for prompt learners: the open_clip text tower run on token embeddings.

Every text path in fewshot goes through :func:`encode_text_embeddings` (or its token-id
wrapper :func:`encode_tokens`): zero-shot classifiers, CoOp-style learned contexts, and the
prompt learners that build on them. The text tower is causal and pools at the end-of-text
(EOT) token, so positions after the longest EOT in a batch cannot influence the output. The
sequence is therefore cut there, which is exact and several times faster for short prompts
than running all ``context_length`` positions.

Layout of a CLIP prompt (open_clip's SimpleTokenizer): ``[SOS] w_1 .. w_n [EOT] [pad]..``.
The EOT id is the largest id in the vocabulary, so its position is ``argmax`` of the ids
(open_clip's ``argmax`` pooling); towers that pool with ``eos`` find it by id instead.

CoOp-style prompt assembly, for orientation (see METHODS.md §4)::

    tokens = backbone.tokenize(["X X X X " + name + "." for name in classnames])
    embeds = embed_tokens(model, tokens)                   # (C, L, W), frozen
    prefix, suffix = embeds[:, :1], embeds[:, 1 + n_ctx:]  # SOS | name . EOT pad
    prompts = torch.cat([prefix, ctx.expand(C, -1, -1), suffix], dim=1)
    text_features = encode_text_embeddings(model, prompts, tokens)  # grads reach ctx

Deep prompts (MaPLe, IVLP, PromptSRC; METHODS.md §0.1, §6, §8). A deep prompt of block j
*replaces* the hidden states of the prompt positions before transformer block j (1 <= j < J);
block 0 sees the layer-0 prompts, which are part of the input:

- text (:func:`encode_text_embeddings` with ``deep_prompts``): the layer-0 context sits at
  positions 1..n of the embeddings (after SOS); before block j positions 1..n are replaced
  by ``deep_prompts[j - 1]``. The sequence is still cut after the longest EOT (the tower is
  causal, and the prompt positions come before every EOT).
- vision (:func:`encode_images_prompted`): after the class token, the positional embedding
  and patch dropout, and *before* ``ln_pre``, the n layer-0 prompt tokens are appended after
  the patch tokens; before block j the last n tokens are replaced by ``prompts[j]``; the
  class token is pooled as open_clip pools it (``ln_post`` then ``proj``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fewshot.types import FewshotError

__all__ = [
    "TextTower",
    "UnsupportedTextTowerError",
    "UnsupportedVisionTowerError",
    "VisionTower",
    "content_token_lengths",
    "cut_length",
    "embed_tokens",
    "encode_images_prompted",
    "encode_text_embeddings",
    "encode_tokens",
    "eot_index",
    "text_tower",
    "vision_tower",
]


class UnsupportedTextTowerError(FewshotError):
    """The model's text tower is not open_clip's own causal text transformer."""


@dataclass(frozen=True)
class TextTower:
    """The pieces of an open_clip text tower that prompt learners need (shared modules)."""

    token_embedding: nn.Embedding
    positional_embedding: torch.Tensor  # (context_length, W)
    transformer: nn.Module  # open_clip Transformer (batch-first in open_clip >= 2.24)
    ln_final: nn.Module
    text_projection: torch.Tensor | nn.Module | None  # Parameter (W, D), nn.Linear, or None
    attn_mask: torch.Tensor | None  # additive causal mask (context_length, context_length)
    pool_type: str  # "argmax" | "eos" | "first" | "last" | "none"
    eos_id: int | None

    @property
    def causal(self) -> bool:
        return self.attn_mask is not None

    @property
    def truncatable(self) -> bool:
        """True when cutting after the last EOT leaves the pooled output unchanged."""
        return self.causal and self.pool_type in ("argmax", "eos", "first")

    @property
    def cast_dtype(self) -> torch.dtype:
        get = getattr(self.transformer, "get_cast_dtype", None)
        dtype: torch.dtype = get() if callable(get) else self.positional_embedding.dtype
        return dtype


def text_tower(model: nn.Module) -> TextTower:
    """The text tower of an open_clip ``CLIP`` (or ``CustomTextCLIP`` with open_clip's own
    ``TextTransformer``); raise :class:`UnsupportedTextTowerError` for anything else."""
    source: nn.Module = model
    inner = getattr(model, "text", None)
    if not hasattr(model, "token_embedding") and inner is not None:
        source = inner
    needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
    missing = [name for name in needed if not hasattr(source, name)]
    plain = getattr(source, "cls_emb", None) is None and not getattr(source, "use_pad_mask", False)
    if missing or not plain:
        kind = type(inner).__name__ if inner is not None else type(model).__name__
        raise UnsupportedTextTowerError(
            f"The text tower of this model ({type(model).__name__} with {kind}) is not open_clip's "
            "standard causal text transformer, so prompt embeddings cannot be fed to it. Prompt "
            "learners need a CLIP-style backbone (e.g. ViT-B-16:openai or toy)."
        )
    is_clip = source is model
    return TextTower(
        token_embedding=source.token_embedding,  # type: ignore[arg-type]
        positional_embedding=source.positional_embedding,  # type: ignore[arg-type]
        transformer=source.transformer,  # type: ignore[arg-type]
        ln_final=source.ln_final,  # type: ignore[arg-type]
        text_projection=getattr(source, "text_projection", None),
        attn_mask=getattr(source, "attn_mask", None),
        pool_type=str(getattr(source, "text_pool_type" if is_clip else "pool_type", "argmax")),
        eos_id=getattr(source, "text_eos_id" if is_clip else "eos_id", None),
    )


def eot_index(model: nn.Module | TextTower, tokens: torch.Tensor) -> torch.Tensor:
    """Position of the end-of-text token in each row of ``tokens`` (C, L) -> (C,) int64.

    For ``argmax`` pooling this is the argmax of the ids (the EOT id is the largest; ties
    resolve to the first occurrence, as in open_clip); for ``eos`` pooling the first
    position holding the tower's EOS id.
    """
    tower = model if isinstance(model, TextTower) else text_tower(model)
    if tower.pool_type == "eos" and tower.eos_id is not None:
        return (tokens == tower.eos_id).int().argmax(dim=-1)
    return tokens.argmax(dim=-1)


def content_token_lengths(model: nn.Module | TextTower, tokens: torch.Tensor) -> torch.Tensor:
    """Number of tokens between SOS and EOT per row, e.g. the token length of a class name
    tokenised alone (needed to split a CoOp suffix for the ``middle``/``front`` positions)."""
    return eot_index(model, tokens) - 1


def cut_length(model: nn.Module | TextTower, tokens: torch.Tensor) -> int:
    """How many leading positions of ``tokens`` (C, L) the text tower must run to be exact."""
    tower = model if isinstance(model, TextTower) else text_tower(model)
    length = int(tokens.shape[1])
    if not tower.truncatable or tokens.numel() == 0:
        return length
    if tower.pool_type == "first":
        return 1
    return min(length, int(eot_index(tower, tokens).max()) + 1)


def embed_tokens(model: nn.Module | TextTower, tokens: torch.Tensor) -> torch.Tensor:
    """Token embeddings (C, L, W) of ids (C, L), in the tower's compute dtype."""
    tower = model if isinstance(model, TextTower) else text_tower(model)
    ids = tokens.to(tower.token_embedding.weight.device)
    embedded: torch.Tensor = tower.token_embedding(ids)
    return embedded.to(tower.cast_dtype)


def encode_text_embeddings(
    model: nn.Module | TextTower,
    embeddings: torch.Tensor,
    tokens: torch.Tensor,
    *,
    deep_prompts: Sequence[torch.Tensor] = (),
) -> torch.Tensor:
    """Run the text tower on token embeddings (C, L, W) -> unnormalised text features (C, D).

    ``tokens`` (C, L) are the ids the embeddings stand for; only the position of EOT in each
    row matters (pooling), so learned context vectors can replace any non-EOT positions.
    The sequence is cut after the longest EOT in the batch (exact: the tower is causal).
    Gradients flow to ``embeddings``; wrap in ``torch.no_grad()`` for frozen prompts.

    ``deep_prompts`` (deep prompting): ``deep_prompts[j - 1]``, of shape (n, W) or (C, n, W),
    replaces the hidden states at positions 1..n before transformer block j, for
    j = 1..len(deep_prompts) (at most the number of blocks minus one). With none, the tower
    runs as one call, exactly as before.
    """
    tower = model if isinstance(model, TextTower) else text_tower(model)
    if embeddings.shape[:2] != tokens.shape:
        raise ValueError(
            f"embeddings {tuple(embeddings.shape)} and tokens {tuple(tokens.shape)} disagree on (C, L)."
        )
    cut = cut_length(tower, tokens)
    tokens = tokens[:, :cut].to(embeddings.device)
    x = embeddings[:, :cut].to(tower.cast_dtype) + tower.positional_embedding[:cut].to(tower.cast_dtype)
    mask = tower.attn_mask[:cut, :cut] if tower.attn_mask is not None else None
    if deep_prompts:
        n = _check_deep(deep_prompts, tower.transformer, x.shape[-1], "text")
        if 1 + n >= cut:
            raise ValueError(f"{n} deep text prompt tokens do not fit before the EOT (cut at {cut}).")
        x = _run_blocks(tower.transformer, x, mask, deep_prompts, _replace_after_sos)
    else:
        x = _run_transformer(tower.transformer, x, mask)
    x = tower.ln_final(x)
    pooled = _pool(tower, x, tokens)
    return _project(tower.text_projection, pooled)


def encode_tokens(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """Unnormalised text features (C, D) of token ids (C, L), cut at the longest EOT.

    Equal to open_clip's ``model.encode_text(tokens)`` up to float rounding. A model whose
    text tower is not the standard one falls back to ``model.encode_text`` (no cut).
    """
    try:
        tower = text_tower(model)
    except UnsupportedTextTowerError:
        return model.encode_text(tokens)  # type: ignore[operator,no-any-return]
    cut = cut_length(tower, tokens)
    tokens = tokens[:, :cut]
    return encode_text_embeddings(tower, embed_tokens(tower, tokens), tokens)


# ------------------------------------------------------------------------------------------
# The vision tower with prompt tokens


class UnsupportedVisionTowerError(FewshotError):
    """The model's image tower cannot take prompt tokens (it is no open_clip ViT, or pools
    in a way prompt tokens would change)."""


@dataclass(frozen=True)
class VisionTower:
    """The pieces of an open_clip ``VisionTransformer`` that deep prompting needs (shared)."""

    conv1: nn.Module
    class_embedding: torch.Tensor  # (W,)
    positional_embedding: torch.Tensor  # (1 + grid², W)
    patch_dropout: nn.Module  # identity in eval mode
    ln_pre: nn.Module
    transformer: nn.Module  # open_clip Transformer
    ln_post: nn.Module
    proj: torch.Tensor | None  # (W, D)
    pool_type: str  # "tok" (class token) | "avg" (mean of the patch tokens)
    final_ln_after_pool: bool

    @property
    def width(self) -> int:
        return int(self.class_embedding.shape[-1])

    @property
    def layers(self) -> int:
        return len(self.transformer.resblocks)  # type: ignore[arg-type]

    @property
    def dtype(self) -> torch.dtype:
        weight: torch.Tensor = self.conv1.weight  # type: ignore[assignment]
        return weight.dtype


_VIT_PARTS = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")


def vision_tower(model: nn.Module, backbone: str = "") -> VisionTower:
    """The image tower of an open_clip model (or the ``visual`` module itself), ready for
    prompt tokens; raise :class:`UnsupportedVisionTowerError` naming ``backbone`` otherwise.

    Supported: open_clip's ``VisionTransformer`` with class-token pooling (CLIP: ``ln_post``
    on token 0, then ``proj``; ``final_ln_after_pool`` is honoured) or average pooling (over
    the patch tokens only, never the prompts). Not supported: ResNets (``ModifiedResNet``),
    timm towers, and ViTs with an attention pooler.
    """
    visual: nn.Module = getattr(model, "visual", model)
    kind = type(visual).__name__
    name = f"backbone {backbone!r}" if backbone else "this backbone"
    fix = "Deep prompts need a ViT image tower: use e.g. ViT-B-16:openai (or toy)."
    resblocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if any(not hasattr(visual, part) for part in _VIT_PARTS) or not isinstance(resblocks, nn.ModuleList):
        raise UnsupportedVisionTowerError(
            f"The image tower of {name} ({kind}) is not an open_clip VisionTransformer, so it "
            f"cannot take prompt tokens. {fix}"
        )
    pool_type = str(getattr(visual, "pool_type", "tok"))
    if getattr(visual, "attn_pool", None) is not None or pool_type not in ("tok", "avg"):
        raise UnsupportedVisionTowerError(
            f"The image tower of {name} ({kind}) pools with an attention pooler or pool_type "
            f"{pool_type!r}, which prompt tokens would change. {fix}"
        )
    return VisionTower(
        conv1=visual.conv1,  # type: ignore[arg-type]
        class_embedding=visual.class_embedding,  # type: ignore[arg-type]
        positional_embedding=visual.positional_embedding,  # type: ignore[arg-type]
        patch_dropout=getattr(visual, "patch_dropout", nn.Identity()),
        ln_pre=visual.ln_pre,  # type: ignore[arg-type]
        transformer=visual.transformer,  # type: ignore[arg-type]
        ln_post=visual.ln_post,  # type: ignore[arg-type]
        proj=getattr(visual, "proj", None),
        pool_type=pool_type,
        final_ln_after_pool=bool(getattr(visual, "final_ln_after_pool", False)),
    )


def encode_images_prompted(
    model: nn.Module | VisionTower, images: torch.Tensor, prompts: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """Unnormalised image features (B, D) of preprocessed images (B, 3, H, W), with prompts.

    ``prompts[0]`` (n, W) or (B, n, W) is appended after the patch tokens before ``ln_pre``;
    ``prompts[j]`` replaces the last n tokens before transformer block j (j >= 1). With no
    prompts this is open_clip's ``encode_image``. Gradients flow to the prompts.
    """
    tower = model if isinstance(model, VisionTower) else vision_tower(model)
    x = tower.conv1(images.to(tower.dtype))  # (B, W, grid, grid)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)  # (B, grid², W)
    cls = tower.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + tower.positional_embedding.to(x.dtype)
    x = tower.patch_dropout(x)
    tokens = x.shape[1]  # class token + patches
    if prompts:
        _check_deep(prompts[1:], tower.transformer, tower.width, "vision", first=prompts[0])
        x = torch.cat([x, _per_row(prompts[0], x)], dim=1)  # (B, tokens + n, W)
    x = tower.ln_pre(x)
    if len(prompts) > 1:
        x = _run_blocks(tower.transformer, x, None, prompts[1:], _replace_last)
    else:
        x = _run_transformer(tower.transformer, x, None)
    pooled = _pool_image(tower, x, tokens)
    return pooled @ tower.proj if tower.proj is not None else pooled


def _pool_image(tower: VisionTower, x: torch.Tensor, tokens: int) -> torch.Tensor:
    """open_clip's pooling (``VisionTransformer._pool`` without attention pooling), reading
    only the class token and the patch tokens (positions < ``tokens``), never the prompts."""
    if tower.final_ln_after_pool:
        return tower.ln_post(_global_pool(tower, x, tokens))  # type: ignore[no-any-return]
    return _global_pool(tower, tower.ln_post(x), tokens)


def _global_pool(tower: VisionTower, x: torch.Tensor, tokens: int) -> torch.Tensor:
    if tower.pool_type == "avg":
        return x[:, 1:tokens].mean(dim=1)
    return x[:, 0]


# ------------------------------------------------------------------------------------------
# Running transformer blocks


def _check_deep(
    deep: Sequence[torch.Tensor],
    transformer: nn.Module,
    width: int,
    tower: str,
    first: torch.Tensor | None = None,
) -> int:
    """Number of prompt tokens n; all prompts must be (n, W) or (B, n, W), one per block."""
    prompts = ([first] if first is not None else []) + list(deep)
    shapes = [tuple(p.shape[-2:]) for p in prompts]
    if any(p.dim() not in (2, 3) for p in prompts) or len(set(shapes)) != 1 or shapes[0][-1] != width:
        raise ValueError(f"{tower} prompts must all be (n, {width}) or (B, n, {width}); got {shapes}.")
    blocks = len(transformer.resblocks)  # type: ignore[arg-type]
    if len(deep) > blocks - 1:
        raise ValueError(f"{len(deep)} deep {tower} prompts, but the tower has {blocks - 1} deeper blocks.")
    return int(shapes[0][0])


def _per_row(prompt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (n, W) prompt shared by every row of ``x`` (N, L, W), or a (N, n, W) one, in x's dtype."""
    prompt = prompt.to(x.dtype)
    return prompt.expand(x.shape[0], -1, -1) if prompt.dim() == 2 else prompt


def _replace_after_sos(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """Text: positions 1..n of ``x`` (N, L, W) become ``prompt``."""
    n = prompt.shape[-2]
    return torch.cat([x[:, :1], _per_row(prompt, x), x[:, 1 + n :]], dim=1)


def _replace_last(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """Vision: the last n positions of ``x`` (N, L, W) become ``prompt``."""
    n = prompt.shape[-2]
    return torch.cat([x[:, : x.shape[1] - n], _per_row(prompt, x)], dim=1)


def _run_blocks(
    transformer: nn.Module,
    x: torch.Tensor,
    mask: torch.Tensor | None,
    deep: Sequence[torch.Tensor],
    replace: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The transformer's blocks one by one on batch-first ``x``; before block j (1 <= j <=
    len(deep)) ``replace(x, deep[j - 1])`` swaps in that block's prompt."""
    # Blocks take the layout their transformer runs in: batch-first when it says so
    # (open_clip >= 2.24 with batch_first=True), sequence-first otherwise.
    seq_first = not getattr(transformer, "batch_first", False)
    for j, block in enumerate(transformer.resblocks):  # type: ignore[arg-type]
        if 1 <= j <= len(deep):
            x = replace(x, deep[j - 1])
        if seq_first:
            x = block(x.transpose(0, 1), attn_mask=mask).transpose(0, 1)
        else:
            x = block(x, attn_mask=mask)
    return x


def _run_transformer(transformer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # open_clip >= 2.24 transformers take batch-first input and transpose internally when
    # they are sequence-first; older ones (no ``batch_first`` attribute) expect LND.
    if getattr(transformer, "batch_first", None) is None:
        out: torch.Tensor = transformer(x.permute(1, 0, 2), attn_mask=mask)
        return out.permute(1, 0, 2)
    result: torch.Tensor = transformer(x, attn_mask=mask)
    return result


def _pool(tower: TextTower, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(x.shape[0], device=x.device)
    if tower.pool_type in ("argmax", "eos"):
        return x[rows, eot_index(tower, tokens).to(x.device)]
    if tower.pool_type == "first":
        return x[:, 0]
    if tower.pool_type == "last":
        return x[:, -1]
    return x


def _project(projection: torch.Tensor | nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    if projection is None:
        return x
    if isinstance(projection, nn.Module):
        out: torch.Tensor = projection(x)
        return out
    projected: torch.Tensor = x @ projection
    return projected
