"""Tip-Adapter's full (β, α) search: the batched grid vs the official pair-by-pair loop.

Sizes: 10 classes × 16 shots = 160 cache keys, D = 512 (ViT-B/16's feature width), the
official grid of 200 β × 20 α = 4,000 pairs, on the few-shot val set (4 per class = 40
images) and on a larger val set (40 per class = 400 images, as the full val split of a small
dataset). Random unit features; the cost does not depend on their values.

- Batched (``fewshot.methods._tip_cache.search_grid``): the affinity and zero-shot logits
  once, the exponential for a chunk of β values at a time, the accuracy of every pair at once.
- Baseline, written here from gaopengcuhk/Tip-Adapter@d0e2d6f8 utils.py ``search_hp``: a
  Python double loop over the pairs that recomputes the affinity, the cache logits, the
  zero-shot logits and the accuracy for every pair, keeping the first strictly better pair.

Both return the same (β, α); the benchmark checks it.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.methods._tip_cache import search_grid

from .conftest import interleaved

CLASSES, SHOTS, DIM = 10, 16, 512
SCALE, STEPS = (7.0, 3.0), (200, 20)


def problem(val_per_class: int) -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    keys = F.normalize(torch.randn(CLASSES * SHOTS, DIM, generator=g), dim=-1)
    values = F.one_hot(torch.arange(CLASSES * SHOTS) // SHOTS, CLASSES).float()
    labels = torch.arange(CLASSES * val_per_class) % CLASSES
    centres = torch.randn(CLASSES, DIM, generator=g)
    val = F.normalize(centres[labels] + 3.0 * torch.randn(len(labels), DIM, generator=g), dim=-1)
    weights = F.normalize(centres + 5.0 * torch.randn(CLASSES, DIM, generator=g), dim=-1)
    return val, labels, weights, keys, values


def official_loop(val, labels, weights, keys, values) -> tuple[float, float]:
    """utils.py ``search_hp``: β outer, α inner, everything recomputed per pair."""
    betas = [i * (SCALE[0] - 0.1) / STEPS[0] + 0.1 for i in range(STEPS[0])]
    alphas = [i * (SCALE[1] - 0.1) / STEPS[1] + 0.1 for i in range(STEPS[1])]
    best_acc, best = 0.0, (0.0, 0.0)
    for beta in betas:
        for alpha in alphas:
            affinity = val @ keys.t()
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
            clip_logits = 100.0 * val @ weights.t()
            tip_logits = clip_logits + cache_logits * alpha
            acc = 100.0 * float((tip_logits.argmax(dim=1) == labels).float().sum()) / len(labels)
            if acc > best_acc:
                best_acc, best = acc, (beta, alpha)
    return best


@pytest.mark.parametrize("val_per_class", [4, 40])
def test_tip_search_speedup(benchmark, val_per_class: int) -> None:
    args = problem(val_per_class)
    with torch.no_grad():
        times = interleaved(
            benchmark,
            lambda: search_grid(*args, SCALE, STEPS),
            {"official_loop": lambda: official_loop(*args)},
            rounds=3,
        )
        got = search_grid(*args, SCALE, STEPS)
        assert (got.beta, got.alpha) == pytest.approx(official_loop(*args), abs=1e-12)
    ratio = times["official_loop"] / times["fast"]
    benchmark.extra_info.update(
        {"baseline_official_loop_s": times["official_loop"], "speedup": ratio, "val_images": len(args[1])}
    )
    print(
        f"\ntip search, {len(args[1])} val images, 4,000 pairs: batched {times['fast'] * 1e3:.1f} ms, "
        f"official loop {times['official_loop']:.2f} s, {ratio:.0f}x"
    )
