"""Running transformer blocks one by one, with deep prompts swapped in before each block.

Shared by the text tower (:mod:`fewshot.prompting.text`) and the image tower
(:mod:`fewshot.prompting.vision`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

__all__ = ["check_deep", "per_row", "replace_after_sos", "replace_last", "run_blocks", "run_transformer"]


def check_deep(
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


def per_row(prompt: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (n, W) prompt shared by every row of ``x`` (N, L, W), or a (N, n, W) one, in x's dtype."""
    prompt = prompt.to(x.dtype)
    return prompt.expand(x.shape[0], -1, -1) if prompt.dim() == 2 else prompt


def replace_after_sos(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """Text: positions 1..n of ``x`` (N, L, W) become ``prompt``."""
    n = prompt.shape[-2]
    return torch.cat([x[:, :1], per_row(prompt, x), x[:, 1 + n :]], dim=1)


def replace_last(x: torch.Tensor, prompt: torch.Tensor) -> torch.Tensor:
    """Vision: the last n positions of ``x`` (N, L, W) become ``prompt``."""
    n = prompt.shape[-2]
    return torch.cat([x[:, : x.shape[1] - n], per_row(prompt, x)], dim=1)


def run_blocks(
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


def run_transformer(transformer: nn.Module, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    # open_clip >= 2.24 transformers take batch-first input and transpose internally when
    # they are sequence-first; older ones (no ``batch_first`` attribute) expect LND.
    if getattr(transformer, "batch_first", None) is None:
        out: torch.Tensor = transformer(x.permute(1, 0, 2), attn_mask=mask)
        return out.permute(1, 0, 2)
    result: torch.Tensor = transformer(x, attn_mask=mask)
    return result
