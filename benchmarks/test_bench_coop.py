"""One CoOp epoch on cached augmented-view features vs online augmentation.

Online mode renders, augments and encodes every support image through the frozen image
encoder each epoch, as the original CoOp loop does; the cached mode reads one of the V
augmented views encoded once. Toy backbone, toy-colors, 12 classes x 16 shots.
"""

from __future__ import annotations

import dataclasses

import pytest

from fewshot.methods.coop import CoOp, CoOpConfig
from fewshot.testing import make_fit_context

from .conftest import best_of


@pytest.fixture(scope="module")
def contexts():
    cached = make_fit_context("toy", "toy-colors", classes=tuple(range(12)), shots=16, aug_views=2)
    len(cached.train_views)  # encode the views now, outside the timing
    online = dataclasses.replace(cached, train_views=None)
    return cached, online


def _epoch(ctx) -> None:
    CoOp(CoOpConfig(epochs=1)).fit(ctx)


def test_coop_epoch_cached_vs_online(benchmark, contexts) -> None:
    cached, online = contexts
    baseline = best_of(lambda: _epoch(online))
    benchmark(lambda: _epoch(cached))
    ratio = baseline / benchmark.stats.stats.min
    benchmark.extra_info.update({"baseline_online_s": baseline, "speedup": ratio})
    print(f"\nCoOp epoch on cached features: {ratio:.1f}x faster than online ({baseline:.3f}s baseline)")
