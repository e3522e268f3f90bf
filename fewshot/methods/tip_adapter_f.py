"""Tip-Adapter-F: Tip-Adapter with the cache keys fine-tuned, then (β, α) searched again.

Paper: Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022 (arXiv 2207.09519). Official code:
https://github.com/gaopengcuhk/Tip-Adapter at d0e2d6f8: main.py ``run_tip_adapter_F``,
main_imagenet.py ``run_tip_adapter_F`` (both last changed in e6bdba4, 2022-07-15),
configs/*.yaml. Spec: docs/methods.md#tip-adapter-f. The cache, classifier, logits, search
and presets are Tip-Adapter's (:mod:`fewshot.methods.tip_adapter`).

- The keys become a learnable (NK, D) matrix initialised to the cache keys (the official
  ``nn.Linear(D, NK, bias=False)`` whose weight is the keys); values and W stay fixed.
- Loss: cross-entropy on 100 · f·Wᵀ + α · exp(−β(1 − f·Kᵀ)) · L with the *initial* β, α
  (``init_beta``, ``init_alpha``) fixed during training; f the L2-normalised feature of
  an augmented support image.
- AdamW (lr 0.001, eps 1e-4, torch's default weight decay 0.01), batch 256, shuffled, the
  last short batch kept (``drop_last=False``), cosine annealing to 0 over
  epochs × iterations, stepped every iteration. Epochs: 20 (EuroSAT 100).
- Default ``protocol="fewshot-val"``: the last epoch's keys are kept, then (β, α) is
  searched on the few-shot val set with those keys.

``protocol="original"`` (the released protocol, reads test data, records marked
``selected_on_test``): after every epoch the keys are scored on the test split with the
initial β, α, and the best-test epoch (first best) is kept; the search then runs on the full
val split (ImageNet: the test split), and the reported accuracy is the max of the
best-epoch test accuracy and the post-search one, so ``predict`` uses whichever (β, α) gave
that max (ties: the searched pair).

Deviations from the official code (and Tip-Adapter's, which apply too):
- Training features: with cached views (the default), epoch e gives every support image one
  of its ``--aug-views`` cached views, a different one each epoch until all are used (each
  image's order of views is a permutation drawn with ``ctx.generator``); the official loader
  augments afresh every epoch. The views are those the keys were built from, so training
  sees no augmentation the cache has not. ``--aug-views online`` encodes freshly augmented
  images every epoch, as the original (with the harness's scale (0.08, 1) crops).
- The keys are fp32 under the run's autocast (the official Linear is fp16).
- The search of the default protocol uses the last-epoch keys and the few-shot val set.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods._tip_cache import tip_logits
from fewshot.methods.base import FitContext
from fewshot.methods.tip_adapter import TipAdapter, TipAdapterConfig, tip_preset
from fewshot.types import ConfigError, FeatureSet, FewshotError
from fewshot.workload import StepCost

__all__ = ["TipAdapterF", "TipAdapterFConfig"]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter-F settings (defaults: configs/imagenet.yaml; training from main.py)."""

    epochs: int = 20  # train_epoch
    lr: float = 0.001
    eps: float = 1e-4  # AdamW eps
    weight_decay: float = 0.01  # torch AdamW's default, which the official code keeps
    batch_size: int = 256

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.epochs < 0 or self.batch_size < 1 or self.lr <= 0 or self.eps <= 0:
            raise ConfigError(
                f"tip-adapter-f needs epochs >= 0, batch_size >= 1 and positive lr and eps, got "
                f"{self.epochs}, {self.batch_size}, {self.lr} and {self.eps}."
            )

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """Tip-Adapter's preset plus the dataset's epochs (EuroSAT 100, else 20)."""
        values = super().preset(protocol, shots, dataset)
        table = tip_preset(dataset)
        if table is not None:
            values["epochs"] = table[3]
        return values


class TipAdapterF(TipAdapter):
    """Tip-Adapter with the cache keys fine-tuned by AdamW on the support set."""

    config_cls = TipAdapterFConfig
    supports_novel = False
    config: TipAdapterFConfig

    def __init__(self, config: TipAdapterFConfig | None = None) -> None:
        super().__init__(config)
        self._best: _BestEpoch | None = None

    @classmethod
    def step_cost(cls, config: Any, classnames: list[str], online: bool) -> StepCost:
        """A step runs no text encoder; online, it encodes one batch of augmented images."""
        return StepCost(images=int(config.batch_size) if online else 0, reads_views=True)

    def trainable_parameters(self) -> int:
        """The fine-tuned keys (NK × D)."""
        return 0 if self.keys is None else int(self.keys.numel())

    def _train(self, ctx: FitContext) -> None:
        """AdamW on the keys with the initial β, α; the last epoch is kept (original
        protocol: the best-test epoch, then the max of it and the post-search accuracy)."""
        assert self.keys is not None
        keys = nn.Parameter(self.keys.detach().clone().float())
        best = _BestEpoch(ctx.test_for_selection) if self.config.protocol == "original" else None
        if best is not None and best.test is None:
            raise FewshotError(
                "tip-adapter-f protocol=original needs test data from the runner (reads_test)."
            )
        if self.config.epochs > 0:
            self._train_keys(ctx, keys, best)
        self.keys = keys.detach().clone()
        if best is not None and best.keys is not None:
            self.keys = best.keys
        self._best = best
        if best is not None:  # recorded with or without the search that follows
            self._selected["epoch"] = best.epoch

    def _train_keys(self, ctx: FitContext, keys: nn.Parameter, best: _BestEpoch | None) -> None:
        """The official loop: cosine-annealed AdamW stepped every batch, epochs × batches."""
        cfg = self.config
        assert self.weights is not None and self.values is not None
        optimizer = torch.optim.AdamW([keys], lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay)
        steps = cfg.epochs * math.ceil(len(ctx.train) / cfg.batch_size)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        orders = _view_orders(ctx)
        for epoch in ctx.epochs(cfg.epochs, "tip-adapter-f"):
            for features, labels in _epoch_batches(ctx, epoch, cfg.batch_size, orders):
                image = F.normalize(features.float(), dim=-1)
                with ctx.autocast():
                    logits = tip_logits(image, self.weights, keys, self.values, cfg.init_beta, cfg.init_alpha)
                    loss = F.cross_entropy(logits.float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
                schedule.step()
            if best is not None:  # the released protocol scores every epoch on test
                self.keys = keys.detach().clone()
                best.score(epoch, self)

    def _search(self, val: FeatureSet) -> None:
        """The search; under the original protocol, keep whichever of the best-epoch (init β,
        α) and the searched pair scores higher on test, as the released code reports."""
        super()._search(val)
        best = self._best
        if best is None or best.test is None:
            return
        if best.accuracy > best.accuracy_of(self, self.beta, self.alpha):
            self.beta, self.alpha = self.config.init_beta, self.config.init_alpha
            self._selected.update({"beta": self.beta, "alpha": self.alpha, "kept": "initial"})
        else:
            self._selected["kept"] = "searched"


class _BestEpoch:
    """The released protocol's epoch selection: test accuracy with the initial β, α."""

    def __init__(self, test: FeatureSet | None) -> None:
        self.test = test
        self.epoch, self.accuracy = -1, 0.0
        self.keys: torch.Tensor | None = None

    def accuracy_of(self, adapter: TipAdapter, beta: float, alpha: float) -> float:
        assert self.test is not None
        correct = 0
        with torch.no_grad():  # in chunks: a full test split times every key can be large
            for rows in torch.split(torch.arange(len(self.test)), 4096):
                logits = adapter.logits(self.test.features[rows], beta, alpha)
                correct += int((logits.argmax(dim=-1).cpu() == self.test.labels[rows]).sum())
        return 100.0 * correct / max(len(self.test), 1)

    def score(self, epoch: int, adapter: TipAdapter) -> None:
        cfg = adapter.config
        accuracy = self.accuracy_of(adapter, cfg.init_beta, cfg.init_alpha)
        if accuracy > self.accuracy:  # strict: the first best epoch, as the official loop
            assert adapter.keys is not None
            self.epoch, self.accuracy, self.keys = epoch, accuracy, adapter.keys.clone()


def _view_orders(ctx: FitContext) -> torch.Tensor | None:
    """(N, V): each support image's order of its cached views, drawn with ``ctx.generator``."""
    if ctx.train_views is None:
        return None
    n = len(ctx.train)
    views = len(ctx.train_views) // n
    return torch.argsort(torch.rand(n, views, generator=ctx.generator), dim=1)


def _epoch_batches(
    ctx: FitContext, epoch: int, batch_size: int, orders: torch.Tensor | None
) -> Iterator[Batch]:
    """One shuffled epoch of (raw features, labels), every batch kept, on ``ctx.device``."""
    if ctx.train_views is None or orders is None:
        loader = ctx.train_images.loader(batch_size, augment=True, shuffle=True, generator=ctx.generator)
        for images, labels in loader:
            with torch.no_grad(), ctx.autocast():
                features = ctx.backbone.encode_images(images.to(ctx.device)).float()
            yield features, labels.to(ctx.device)
        return
    n = len(ctx.train)
    view = orders[:, epoch % orders.shape[1]]
    rows = (view * n + torch.arange(n))[torch.randperm(n, generator=ctx.generator)]
    for index in torch.split(rows, batch_size):
        yield ctx.train_views.features[index].to(ctx.device), ctx.train_views.labels[index].to(ctx.device)
