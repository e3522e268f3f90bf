"""Metrics: overall top-1 accuracy, harmonic mean, and aggregation over seeds.

Conventions follow the CoOp code base (docs/methods.md#few-shot and #base-to-novel):

- accuracy is *overall* top-1 over all test images (Dassl's ``Classification`` evaluator),
  in percent, not mean per-class accuracy;
- seeds aggregate to the mean and the *population* standard deviation (``np.std`` default,
  as CoOp's ``parse_test_res.py``), with ``ci95 = 1.96 * std / sqrt(n)``;
- base-to-novel HM is ``2BN / (B + N)``; the "Average" row's HM is the HM of the averaged
  base and averaged novel accuracies, not the mean of per-dataset HMs.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

__all__ = ["accuracy", "aggregate", "average_hm", "harmonic_mean"]


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """Overall top-1 accuracy in percent of ``logits`` (N, C) against ``labels`` (N,)."""
    if logits.ndim != 2 or labels.ndim != 1 or logits.shape[0] != labels.shape[0]:
        raise ValueError(
            "accuracy needs logits (N, C) and labels (N,), "
            f"got {tuple(logits.shape)} and {tuple(labels.shape)}."
        )
    n = int(labels.shape[0])
    if n == 0:
        raise ValueError("accuracy of an empty set is undefined.")
    predictions = logits.argmax(dim=1)
    correct = int((predictions == labels.to(predictions.device)).sum().item())
    return 100.0 * correct / n


def harmonic_mean(base: float, novel: float) -> float:
    """``2 * base * novel / (base + novel)``; 0 when both are 0."""
    if base < 0 or novel < 0:
        raise ValueError(f"harmonic_mean needs non-negative accuracies, got {base} and {novel}.")
    if base + novel == 0:
        return 0.0
    return 2.0 * base * novel / (base + novel)


def aggregate(values: Iterable[float]) -> dict[str, float]:
    """Mean, population std, 95% CI half-width (1.96 * std / sqrt(n)) and n of ``values``.

    The keys are ``mean``, ``std``, ``ci95`` and ``n`` (``n`` is an integer-valued count).
    """
    xs = [float(v) for v in values]
    if not xs:
        raise ValueError("aggregate of no values is undefined.")
    n = len(xs)
    mean = math.fsum(xs) / n
    # Population std (ddof=0), as numpy's default and CoOp's parse_test_res.py use.
    std = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / n)
    return {"mean": mean, "std": std, "ci95": 1.96 * std / math.sqrt(n), "n": n}


def average_hm(rows: Iterable[tuple[float, float] | Mapping[str, float]]) -> dict[str, float]:
    """The base-to-novel "Average" row over datasets.

    ``rows`` holds one (base, novel) pair per dataset (seed means), as tuples or as mappings
    with keys ``base`` and ``novel``. Returns the averaged ``base`` and ``novel`` and
    ``hm = harmonic_mean(base, novel)`` of those averages (the convention of the CoCoOp,
    MaPLe and PromptSRC tables), plus ``n`` datasets.
    """
    pairs = [(float(r["base"]), float(r["novel"])) if isinstance(r, Mapping) else (r[0], r[1]) for r in rows]
    if not pairs:
        raise ValueError("average_hm of no rows is undefined.")
    base = math.fsum(b for b, _ in pairs) / len(pairs)
    novel = math.fsum(n for _, n in pairs) / len(pairs)
    return {"base": base, "novel": novel, "hm": harmonic_mean(base, novel), "n": len(pairs)}
