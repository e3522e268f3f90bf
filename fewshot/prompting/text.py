"""The open_clip text tower run on token embeddings, cut after the end-of-text token.

Every text path in fewshot goes through :func:`encode_text_embeddings` (or its token-id
wrapper :func:`encode_tokens`): zero-shot classifiers, CoOp-style learned contexts, and the
prompt learners that build on them. The text tower is causal and pools at the end-of-text
(EOT) token, so positions after the longest EOT in a batch cannot influence the output. The
sequence is therefore cut there, which is exact and several times faster for short prompts
than running all ``context_length`` positions.

Layout of a CLIP prompt (open_clip's SimpleTokenizer): ``[SOS] w_1 .. w_n [EOT] [pad]..``.
The EOT id is the largest id in the vocabulary, so its position is ``argmax`` of the ids
(open_clip's ``argmax`` pooling); towers that pool with ``eos`` find it by id instead.

Deep text prompts (MaPLe, IVLP, PromptSRC): the layer-0 context sits at positions 1..n of
the embeddings (after SOS); before block j positions 1..n are replaced by
``deep_prompts[j - 1]``. The sequence is still cut after the longest EOT (the tower is
causal, and the prompt positions come before every EOT).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fewshot.prompting._blocks import check_deep, replace_after_sos, run_blocks, run_transformer
from fewshot.types import FewshotError

__all__ = [
    "TextTower",
    "UnsupportedTextTowerError",
    "content_token_lengths",
    "cut_length",
    "embed_tokens",
    "encode_text_embeddings",
    "encode_tokens",
    "eot_index",
    "project_text",
    "text_tower",
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
        n = check_deep(deep_prompts, tower.transformer, x.shape[-1], "text")
        if 1 + n >= cut:
            raise ValueError(f"{n} deep text prompt tokens do not fit before the EOT (cut at {cut}).")
        x = run_blocks(tower.transformer, x, mask, deep_prompts, replace_after_sos)
    else:
        x = run_transformer(tower.transformer, x, mask)
    x = tower.ln_final(x)
    pooled = _pool(tower, x, tokens)
    return project_text(tower.text_projection, pooled)


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


def _pool(tower: TextTower, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(x.shape[0], device=x.device)
    if tower.pool_type in ("argmax", "eos"):
        return x[rows, eot_index(tower, tokens).to(x.device)]
    if tower.pool_type == "first":
        return x[:, 0]
    if tower.pool_type == "last":
        return x[:, -1]
    return x


def project_text(projection: torch.Tensor | nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """The text projection (a (W, D) matrix, an ``nn.Module``, or none) of pooled states (..., W)."""
    if projection is None:
        return x
    if isinstance(projection, nn.Module):
        out: torch.Tensor = projection(x)
        return out
    projected: torch.Tensor = x @ projection
    return projected
