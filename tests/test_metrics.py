"""Metrics: accuracy, harmonic mean, seed aggregation (CoOp conventions)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fewshot.metrics import accuracy, aggregate, average_hm, harmonic_mean


def test_accuracy_is_overall_top1_percent() -> None:
    # Class 0 has 3 images (all right), class 1 has 1 image (wrong): overall 75%, while
    # mean per-class accuracy would be 50%.
    logits = torch.tensor([[2.0, 1.0], [3.0, 0.0], [0.5, 0.1], [0.9, 0.2]])
    labels = torch.tensor([0, 0, 0, 1])
    assert accuracy(logits, labels) == pytest.approx(75.0)


def test_accuracy_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        accuracy(torch.zeros(3, 2), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError):
        accuracy(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long))


def test_harmonic_mean() -> None:
    assert harmonic_mean(0.0, 0.0) == 0.0
    assert harmonic_mean(50.0, 0.0) == 0.0
    assert harmonic_mean(60.0, 60.0) == pytest.approx(60.0)
    assert harmonic_mean(40.0, 60.0) == pytest.approx(48.0)  # 2*40*60/100


def test_aggregate_matches_population_std_and_coop_ci() -> None:
    values = [71.2, 73.9, 72.4]
    out = aggregate(values)
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(np.mean(values))
    assert out["std"] == pytest.approx(np.std(values))  # ddof=0, as parse_test_res.py
    assert out["ci95"] == pytest.approx(1.96 * np.std(values) / np.sqrt(3))
    # By hand for [1, 2, 3]: std = sqrt(2/3).
    small = aggregate([1, 2, 3])
    assert small["std"] == pytest.approx(math.sqrt(2 / 3))
    assert small["ci95"] == pytest.approx(1.96 * math.sqrt(2 / 3) / math.sqrt(3))
    assert aggregate([5.0]) == {"mean": 5.0, "std": 0.0, "ci95": 0.0, "n": 1}
    with pytest.raises(ValueError):
        aggregate([])


@pytest.mark.parametrize(("base", "novel", "hm"), [(80.47, 71.69, 75.83), (82.28, 75.14, 78.55)])
def test_average_row_hm_matches_published_tables(base: float, novel: float, hm: float) -> None:
    # docs/methods.md#base-to-novel: CoCoOp and MaPLe average rows.
    assert round(harmonic_mean(base, novel), 2) == hm
    # Two datasets whose means are (base, novel): the average row's HM is the HM of the means,
    # which differs from the mean of the per-dataset HMs.
    rows: list[tuple[float, float] | dict[str, float]] = [
        (base + 10.0, novel - 20.0),
        {"base": base - 10.0, "novel": novel + 20.0},
    ]
    out = average_hm(rows)
    assert out["base"] == pytest.approx(base)
    assert out["novel"] == pytest.approx(novel)
    assert round(out["hm"], 2) == hm
    mean_of_hms = (harmonic_mean(base + 10.0, novel - 20.0) + harmonic_mean(base - 10.0, novel + 20.0)) / 2
    assert abs(mean_of_hms - out["hm"]) > 0.5
