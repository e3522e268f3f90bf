"""Tip-Adapter's cache model and its (β, α) search, shared by tip-adapter and tip-adapter-f.

- :func:`cache_keys_from_views`: keys from the run's cached augmented views (the un-normalised
  features of each image averaged over its views, then L2-normalised) and one-hot values.
- :func:`cache_keys_online`: the same from ``augment_epoch`` fresh augmented passes.
- :func:`tip_logits`: ``100 · f·Wᵀ + α · exp(−β(1 − f·Kᵀ)) · L``.
- :func:`search_grid` / :func:`grid_accuracy`: the official exhaustive grid, scored in one
  batched computation (the affinity once, the exponential for a chunk of β values at a time,
  the accuracy of every (β, α) pair at once), first best in the official loop order.

Facts about the official code cite gaopengcuhk/Tip-Adapter@d0e2d6f8 (utils.py, main.py;
those files last changed in e6bdba4, 2022-07-15).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshot.methods.base import FitContext
from fewshot.types import FeatureSet, FewshotError

__all__ = [
    "CLIP_SCALE",
    "GridResult",
    "cache_keys_from_views",
    "cache_keys_online",
    "cache_logits",
    "grid_accuracy",
    "grid_values",
    "search_grid",
    "tip_logits",
]

CLIP_SCALE = 100.0  # the official code multiplies the cosine by a hard-coded 100 (main.py)
CHUNK_ELEMENTS = 1 << 24  # largest intermediate tensor of the grid search (floats, 64 MiB)


def cache_keys_from_views(views: FeatureSet, n: int, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys (N, D) and one-hot values (N, C) from ``V`` view-major views of ``n`` images."""
    if n == 0 or len(views) % n:
        raise FewshotError(f"tip-adapter: {len(views)} augmented view rows are not a multiple of {n} images.")
    feats = views.features.float().reshape(len(views) // n, n, -1)
    keys = F.normalize(feats.mean(dim=0), dim=-1)
    return keys, one_hot(views.labels[:n], num_classes)


def cache_keys_online(ctx: FitContext, passes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keys and values from ``passes`` augmented passes over the support images (in order),
    encoded by the frozen image encoder; crops are drawn from ``ctx.generator``."""
    total: torch.Tensor | None = None
    labels: torch.Tensor | None = None
    for _ in range(passes):
        loader = ctx.train_images.loader(256, augment=True, shuffle=False, generator=ctx.generator)
        feats, labs = [], []
        for images, batch_labels in loader:
            with torch.no_grad(), ctx.autocast():
                feats.append(ctx.backbone.encode_images(images.to(ctx.device)).float().cpu())
            labs.append(batch_labels)
        one_pass = torch.cat(feats)
        total = one_pass if total is None else total + one_pass
        labels = torch.cat(labs) if labels is None else labels
    if total is None or labels is None:
        raise FewshotError(f"tip-adapter needs augment_epoch >= 1 augmented passes, got {passes}.")
    return F.normalize(total / passes, dim=-1), one_hot(labels, len(ctx.classnames))


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return F.one_hot(labels.long(), num_classes).float()


def cache_logits(
    image: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, beta: float, alpha: float
) -> torch.Tensor:
    """α · exp(−β(1 − f·Kᵀ)) · L for normalised image features ``image`` (B, D)."""
    affinity = image @ keys.t()
    return alpha * torch.exp(-beta * (1.0 - affinity)) @ values


def tip_logits(
    image: torch.Tensor,
    weights: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    beta: float,
    alpha: float,
) -> torch.Tensor:
    """Tip-Adapter's logits for normalised image features (B, D): zero-shot plus cache."""
    return CLIP_SCALE * image @ weights.t() + cache_logits(image, keys, values, beta, alpha)


def grid_values(scale: float, steps: int) -> torch.Tensor:
    """The official grid ``0.1 + i (scale − 0.1) / steps`` for i = 0..steps−1 (float64)."""
    return torch.tensor([i * (scale - 0.1) / steps + 0.1 for i in range(steps)], dtype=torch.float64)


@dataclass(frozen=True)
class GridResult:
    """The outcome of :func:`search_grid`."""

    beta: float
    alpha: float
    correct: int  # val images right at (beta, alpha)
    total: int  # val images

    @property
    def accuracy(self) -> float:
        return 100.0 * self.correct / max(self.total, 1)


def grid_accuracy(
    image: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    betas: torch.Tensor,
    alphas: torch.Tensor,
) -> torch.Tensor:
    """Correct predictions (len(betas), len(alphas)) of every (β, α) pair, in one batched pass.

    ``image``: normalised features (N, D); the affinity and zero-shot logits are computed
    once; the exponential runs for a chunk of β values and rows at a time (at most
    :data:`CHUNK_ELEMENTS` floats per intermediate), and all α at once.
    """
    image, weights, keys, values = (t.float() for t in (image, weights, keys, values))
    zero_shot = CLIP_SCALE * image @ weights.t()  # (N, C)
    distance = 1.0 - image @ keys.t()  # (N, NK)
    betas_f, alphas_f = betas.float(), alphas.float()
    n, nk, c = distance.shape[0], distance.shape[1], values.shape[1]
    width = max(nk, len(alphas_f) * c)
    rows = max(1, min(n, CHUNK_ELEMENTS // max(width, 1)))
    correct = torch.zeros(len(betas_f), len(alphas_f), dtype=torch.long)
    for start in range(0, n, rows):
        block = slice(start, start + rows)
        dist, zs, lab = distance[block], zero_shot[block], labels[block]
        per_beta = max(1, CHUNK_ELEMENTS // (len(dist) * width))
        for b0 in range(0, len(betas_f), per_beta):
            beta = betas_f[b0 : b0 + per_beta]
            cache = torch.exp(-beta[:, None, None] * dist) @ values  # (b, rows, C)
            logits = zs + alphas_f[None, :, None, None] * cache[:, None]  # (b, a, rows, C)
            hits = logits.argmax(dim=-1) == lab.to(logits.device)
            correct[b0 : b0 + per_beta] += hits.sum(dim=-1).cpu()
    return correct


def search_grid(
    image: torch.Tensor,
    labels: torch.Tensor,
    weights: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: tuple[float, float],
    steps: tuple[int, int],
) -> GridResult:
    """The official (β, α) search: the first best pair in its loop order (β outer, α inner).

    As the official ``search_hp`` (strict ``>`` from a best accuracy of 0), a val set on which
    every pair scores 0 leaves β = α = 0 (zero-shot logits).
    """
    betas, alphas = grid_values(scale[0], steps[0]), grid_values(scale[1], steps[1])
    with torch.no_grad(), torch.autocast(image.device.type, enabled=False):
        correct = grid_accuracy(image, labels, weights, keys, values, betas, alphas)
    flat = int(torch.argmax(correct.flatten()))  # the first maximum, row-major = loop order
    best = int(correct.flatten()[flat])
    if best == 0:
        return GridResult(0.0, 0.0, 0, len(labels))
    i, j = divmod(flat, len(alphas))
    return GridResult(float(betas[i]), float(alphas[j]), best, len(labels))
