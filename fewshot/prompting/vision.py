"""The open_clip image tower with prompt tokens (deep vision prompts).

After the class token, the positional embedding and patch dropout, and *before* ``ln_pre``,
the n layer-0 prompt tokens are appended after the patch tokens; before block j the last n
tokens are replaced by ``prompts[j]``; the class token is pooled as open_clip pools it
(``ln_post`` then ``proj``). A deep prompt *replaces* the hidden states of its positions; it
is never added to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from fewshot.prompting._blocks import check_deep, per_row, replace_last, run_blocks, run_transformer
from fewshot.types import FewshotError

__all__ = ["UnsupportedVisionTowerError", "VisionTower", "encode_images_prompted", "vision_tower"]


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
        check_deep(prompts[1:], tower.transformer, tower.width, "vision", first=prompts[0])
        x = torch.cat([x, per_row(prompts[0], x)], dim=1)  # (B, tokens + n, W)
    x = tower.ln_pre(x)
    if len(prompts) > 1:
        x = run_blocks(tower.transformer, x, None, prompts[1:], replace_last)
    else:
        x = run_transformer(tower.transformer, x, None)
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
