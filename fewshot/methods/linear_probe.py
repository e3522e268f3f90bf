"""Linear probe: logistic regression on frozen image features, C searched on the val set.

Paper: the linear-probe baseline of CoOp (Zhou et al., "Learning to Prompt for
Vision-Language Models", IJCV 2022, arXiv 2109.01134), following the CLIP paper's protocol
(Radford et al., ICML 2021). Official code: https://github.com/KaiyangZhou/CoOp, folder
``lpclip/`` (feat_extractor.py, linear_probe.py, linear_probe.sh). Spec: docs/methods.md#linear-probe.

- Features: the frozen image encoder with the test transform, one view per image,
  not L2-normalised (``normalize=False``, as lpclip; ``True`` normalises them).
- Classifier: scikit-learn ``LogisticRegression`` (lbfgs, L2, ``max_iter=1000``, bias).
- C search on the few-shot val set: the coarse grid 1e6, 1e4, ..., 1e-6 (first best wins,
  as ``np.argmax``), then 8 steps of log-space bisection starting from [c*/10, 10·c*]: fit
  both ends; if the left end scores strictly worse, keep the right classifier and move to
  [mid, right], else keep the left one and move to [left, mid]. The classifier kept at the
  last step is the model.

Deviations:
- The support and val subsets are the harness's Dassl subsets (``ctx.train`` / ``ctx.val``,
  val = min(K, 4) per class), not lpclip's own numpy sampler over the full splits. The
  per-class counts agree (lpclip's {1:1, 2:2, 4:4, 8:4, 16:4}[K] is min(K, 4)); the images
  differ from lpclip's for the same seed.
- lpclip scores the kept classifier on test at every step to print it; only the last one is
  reported, which is what this adapter returns. No test data is seen while fitting.
- ``random_state`` is the run seed (lbfgs is deterministic anyway).
- Speed only, same result: a fit is memoised per C (the bisection refits its kept end at
  every step in lpclip), and small problems run sklearn on one BLAS thread.
- Cannot classify classes it was not trained on (``supports_novel = False``). ``predict``
  accepts any subset or reordering of the training class names.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F

from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.types import AdapterConfig, ConfigError, FeatureSet, FewshotError

if TYPE_CHECKING:
    # scikit-learn is imported where a probe is fitted: it costs most of a second, and
    # `fewshot list methods` imports every method module.
    from sklearn.linear_model import LogisticRegression

__all__ = ["COARSE_GRID", "LinearProbe", "LinearProbeConfig", "SearchResult", "search_c"]

COARSE_GRID = (1e6, 1e4, 1e2, 1.0, 1e-2, 1e-4, 1e-6)
SINGLE_THREAD_SIZE = 1 << 22  # feature-matrix entries up to which sklearn runs on one thread


@dataclass(frozen=True)
class LinearProbeConfig(AdapterConfig):
    """Linear-probe settings (lpclip defaults)."""

    normalize: bool = False  # L2-normalise features first (lpclip does not)
    max_iter: int = 1000
    search_steps: int = 8  # local log-space search steps after the coarse grid
    grid: tuple[float, ...] = COARSE_GRID  # coarse C grid, searched in this order

    def __post_init__(self) -> None:
        if not self.grid or any(c <= 0 for c in self.grid):
            raise ConfigError(f"linear-probe grid must be positive C values, got {self.grid}.")
        if self.search_steps < 0 or self.max_iter < 1:
            raise ConfigError("linear-probe needs search_steps >= 0 and max_iter >= 1.")


@dataclass
class SearchResult:
    """The outcome of :func:`search_c`, with its trace (for logs and tests)."""

    c: float  # C of the kept classifier
    model: Any  # the kept classifier
    accuracy: float  # its val accuracy
    coarse: list[tuple[float, float]]  # (C, val accuracy) over the coarse grid
    steps: list[tuple[float, float, float, float]]  # (C left, C right, acc left, acc right)


def search_c(
    fit_score: Callable[[float], tuple[Any, float]], grid: tuple[float, ...] = COARSE_GRID, steps: int = 8
) -> SearchResult:
    """lpclip's search for the inverse regularisation strength C.

    ``fit_score(c) -> (model, val_accuracy)``. The coarse grid picks c* (first best), then
    ``steps`` rounds of log-space bisection start from [c*/10, 10·c*]. With ``steps=0`` the
    coarse best classifier is kept.
    """
    coarse = []
    best = None
    for c in grid:
        model, acc = fit_score(c)
        coarse.append((c, acc))
        if best is None or acc > best[2]:  # strict: the first best wins, as np.argmax
            best = (c, model, acc)
    assert best is not None
    c_kept, model_kept, acc_kept = best
    log_left, log_right = math.log10(c_kept) - 1.0, math.log10(c_kept) + 1.0
    trace = []
    for _ in range(steps):
        left, right = 10.0**log_left, 10.0**log_right
        model_left, acc_left = fit_score(left)
        model_right, acc_right = fit_score(right)
        trace.append((left, right, acc_left, acc_right))
        mid = 0.5 * (log_left + log_right)
        if acc_left < acc_right:
            c_kept, model_kept, acc_kept = right, model_right, acc_right
            log_left = mid
        else:
            c_kept, model_kept, acc_kept = left, model_left, acc_left
            log_right = mid
    return SearchResult(c_kept, model_kept, acc_kept, coarse, trace)


class LinearProbe(Adapter):
    """Logistic regression on frozen image features (CoOp's lpclip protocol)."""

    config_cls = LinearProbeConfig
    needs = Needs.FEATURES
    supports_novel = False
    config: LinearProbeConfig

    def __init__(self, config: LinearProbeConfig | None = None) -> None:
        super().__init__(config)
        self.classnames: list[str] = []
        self.search: SearchResult | None = None

    def _inputs(self, features: torch.Tensor) -> np.ndarray:
        features = features.detach().float().cpu()
        if self.config.normalize:
            features = F.normalize(features, dim=-1)
        return features.numpy().astype(np.float64)

    def fit(self, ctx: FitContext) -> None:
        """Search C on the few-shot val set; keep the last step's classifier."""
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from threadpoolctl import threadpool_limits

        x_train, y_train = self._inputs(ctx.train.features), ctx.train.labels.numpy()
        x_val, y_val = self._inputs(ctx.val.features), ctx.val.labels.numpy()
        _check_all_classes(ctx.train, len(ctx.classnames))

        fitted: dict[float, tuple[LogisticRegression, float]] = {}

        def fit_score(c: float) -> tuple[LogisticRegression, float]:
            if c in fitted:  # the bisection revisits its kept end; fits are deterministic
                return fitted[c]
            model = LogisticRegression(
                C=c, solver="lbfgs", max_iter=self.config.max_iter, random_state=ctx.seed
            )
            with warnings.catch_warnings():
                # A large C on separable few-shot data often stops at max_iter (lpclip too); the
                # warning would only repeat that on every run.
                warnings.simplefilter("ignore", ConvergenceWarning)
                model.fit(x_train, y_train)
            fitted[c] = model, float(np.mean(model.predict(x_val) == y_val) * 100.0)
            return fitted[c]

        # Few-shot problems are tiny: BLAS thread start-up costs more than the maths (measured
        # 10-20x slower with 2 threads at 320 x 512), so one thread unless the problem is large.
        threads = 1 if x_train.size <= SINGLE_THREAD_SIZE else None
        with threadpool_limits(limits=threads):
            self.search = search_c(fit_score, self.config.grid, self.config.search_steps)
        self.classnames = list(ctx.classnames)

    def trainable_parameters(self) -> int:
        """Weights and biases of the kept logistic regression."""
        if self.search is None:
            return 0
        model = self.search.model
        return int(model.coef_.size + model.intercept_.size)

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """Class scores (the classifier's decision function) over ``batch.classnames``."""
        if self.search is None:
            raise FewshotError("LinearProbe.predict called before fit(): call fit(ctx) first.")
        if batch.features is None:
            raise FewshotError("LinearProbe needs image features in the QueryBatch (Needs.FEATURES).")
        unknown = [name for name in batch.classnames if name not in self.classnames]
        if unknown:
            raise FewshotError(
                f"linear-probe cannot classify classes it was not trained on ({', '.join(unknown[:5])}"
                f"{', ...' if len(unknown) > 5 else ''}): it learns one weight vector per training class. "
                "Use a method with supports_novel (e.g. zeroshot, coop) for unseen classes."
            )
        scores = self.search.model.decision_function(self._inputs(batch.features))
        if scores.ndim == 1:  # binary: sklearn returns the positive-class margin only
            scores = np.stack([np.zeros_like(scores), scores], axis=1)
        logits = torch.from_numpy(scores).float().to(batch.features.device)
        columns = [self.classnames.index(name) for name in batch.classnames]
        return logits[:, columns]


def _check_all_classes(train: FeatureSet, num_classes: int) -> None:
    """sklearn only learns classes it sees; every training class needs a support example."""
    missing = sorted(set(range(num_classes)) - set(train.labels.tolist()))
    if missing:
        raise FewshotError(f"linear-probe: training classes {missing} have no support image.")
