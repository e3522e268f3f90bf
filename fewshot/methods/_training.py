"""Training pieces shared by the prompt learners (CoOp and the methods built on it).

- :class:`SGDConfig`: the settings every Dassl-trained method has (epochs, lr, batch,
  momentum, weight decay, warm-up, init std), with their checks; method configs extend it.
- :func:`sgd_with_schedule`: :func:`make_sgd` and :func:`make_warmup_cosine` from such a config.
- :func:`clip_logits`: logit scale times the cosine of image and text features.
- :func:`seeded_linear`: an ``nn.Linear`` initialised as PyTorch does, from the run's generator.
- :func:`make_sgd`: SGD with the Dassl defaults (momentum 0.9, weight decay 5e-4, no
  Nesterov, dampening 0), which every Dassl config with ``NAME: sgd`` uses.
- :func:`make_warmup_cosine`: Dassl's ``cosine`` scheduler wrapped in its ``constant``
  warm-up, stepped once per epoch (docs/methods.md#optimiser-and-schedule).
- :func:`train_batches`: one epoch of support-set image features, either from cached
  augmented views (one view per image per epoch) or encoded online from augmented images;
  :func:`image_batches`: one epoch of augmented support images (for prompted image towers).
- :func:`fit_sgd`: the one training loop of the prompt learners (Dassl's: SGD steps over an
  epoch's batches under the run's autocast, the schedule stepped once per epoch, the last
  epoch kept).

Dassl's warm-up semantics, reproduced exactly (``WARMUP_RECOUNT: True``, its default):
epochs ``0 .. W-1`` run at the constant ``warmup_lr``; from epoch ``W`` on, the cosine
schedule starts from its beginning, with ``T_max`` equal to the *full* number of epochs, so
epoch ``e >= W`` runs at ``0.5 * lr * (1 + cos(pi * (e - W) / max_epochs))`` and the last
epoch does not reach zero. Dassl uses the absolute ``warmup_lr`` for every parameter group;
here each group gets ``warmup_lr`` too (the factor is computed per group).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR

from fewshot.methods.base import FitContext
from fewshot.types import AdapterConfig, ConfigError

__all__ = [
    "SGDConfig",
    "clip_logits",
    "fit_sgd",
    "image_batches",
    "make_sgd",
    "make_warmup_cosine",
    "seeded_linear",
    "sgd_with_schedule",
    "train_batches",
]

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass(frozen=True)
class SGDConfig(AdapterConfig):
    """Training settings of every Dassl-trained method (defaults: CoOp's ``vit_b16``).

    Method configs extend it and override the defaults their official configs change.
    """

    epochs: int = 200
    lr: float = 0.002
    batch_size: int = 32
    momentum: float = 0.9
    weight_decay: float = 5e-4
    warmup_epochs: int = 1  # constant warm-up epochs at warmup_lr, then cosine
    warmup_lr: float = 1e-5
    init_std: float = 0.02  # random contexts and prompts ~ N(0, init_std²)

    def check_training(self, method: str) -> None:
        """A clear ConfigError for impossible training settings (call from __post_init__)."""
        if self.batch_size < 1 or self.epochs < 0 or self.warmup_epochs < 0:
            raise ConfigError(
                f"{method} needs batch_size >= 1, epochs >= 0 and warmup_epochs >= 0, got "
                f"{self.batch_size}, {self.epochs} and {self.warmup_epochs}."
            )
        if self.lr <= 0 or self.init_std <= 0:
            raise ConfigError(
                f"{method} lr and init_std must be positive, got {self.lr} and {self.init_std}."
            )


def sgd_with_schedule(
    params: Iterable[torch.nn.Parameter], cfg: SGDConfig
) -> tuple[torch.optim.SGD, LambdaLR]:
    """The optimizer and per-epoch schedule of ``cfg`` (step the schedule once per epoch)."""
    optimizer = make_sgd(params, cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    schedule = make_warmup_cosine(
        optimizer, cfg.epochs, warmup_epochs=cfg.warmup_epochs, warmup_lr=cfg.warmup_lr
    )
    return optimizer, schedule


def clip_logits(logit_scale: float | torch.Tensor, image: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """CLIP's logits (B, C): logit_scale · cos(image features (B, D), text features (C, D))."""
    image = torch.nn.functional.normalize(image.float(), dim=-1)
    return logit_scale * image @ torch.nn.functional.normalize(text.float(), dim=-1).t()


def seeded_linear(fan_in: int, fan_out: int, generator: torch.Generator) -> nn.Linear:
    """An nn.Linear initialised as PyTorch initialises one (weight and bias uniform in
    ±1/sqrt(fan_in)), but drawn from ``generator`` instead of the global RNG."""
    layer = nn.Linear(fan_in, fan_out, device="meta").to_empty(device="cpu")  # no init draws
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
        layer.bias.uniform_(-bound, bound, generator=generator)
    return layer


def make_sgd(
    params: Iterable[torch.nn.Parameter], lr: float, *, momentum: float = 0.9, weight_decay: float = 5e-4
) -> torch.optim.SGD:
    """SGD as Dassl builds it (``dampening=0``, ``nesterov=False``)."""
    return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay, dampening=0.0)


def make_warmup_cosine(
    optimizer: torch.optim.Optimizer, max_epochs: int, *, warmup_epochs: int = 1, warmup_lr: float = 1e-5
) -> LambdaLR:
    """Per-epoch LR schedule: constant ``warmup_lr`` for ``warmup_epochs``, then cosine.

    Call ``scheduler.step()`` once after every epoch, as Dassl's trainer does. The closed
    form (rather than chaining CosineAnnealingLR behind a warm-up scheduler) gives the
    exact Dassl values without the recursive update's rounding drift.
    """

    def factor_for(base_lr: float) -> Callable[[int], float]:  # one multiplier per parameter group
        def factor(epoch: int) -> float:
            if epoch < warmup_epochs:
                return warmup_lr / base_lr
            return 0.5 * (1.0 + math.cos(math.pi * (epoch - warmup_epochs) / max_epochs))

        return factor

    return LambdaLR(optimizer, [factor_for(group["lr"]) for group in optimizer.param_groups])


def train_batches(ctx: FitContext, epoch: int, batch_size: int) -> Iterator[Batch]:
    """Raw image features and labels of one training epoch, on ``ctx.device``.

    With cached views (``ctx.train_views``, view-major, V views of N images), epoch ``e``
    uses view ``e mod V``: one augmentation of each image per epoch, as the original data
    loader draws. Batches are shuffled with ``ctx.generator``. Without views (online
    augmentation), images come from ``ctx.train_images`` and pass through the frozen image
    encoder. As in Dassl's train loader, the last short batch is dropped when there are at
    least ``batch_size`` images.
    """
    drop_last = len(ctx.train) >= batch_size
    if ctx.train_views is not None:
        n = len(ctx.train)
        views = len(ctx.train_views) // n
        rows = (epoch % views) * n + torch.randperm(n, generator=ctx.generator)
        for index in torch.split(rows, batch_size):
            if drop_last and len(index) < batch_size:
                break
            features = ctx.train_views.features[index].to(ctx.device)
            yield features, ctx.train_views.labels[index].to(ctx.device)
        return
    loader = ctx.train_images.loader(
        batch_size, augment=True, shuffle=True, generator=ctx.generator, drop_last=drop_last
    )
    for images, labels in loader:
        with torch.no_grad(), ctx.autocast():
            features = ctx.backbone.encode_images(images.to(ctx.device)).float()
        yield features, labels.to(ctx.device)


def image_batches(ctx: FitContext, epoch: int, batch_size: int) -> Iterator[Batch]:
    """Freshly augmented support images and labels of one epoch, on ``ctx.device``.

    Shuffling and the crops draw from ``ctx.generator``; as Dassl's train loader, the last
    short batch is dropped when there are at least ``batch_size`` images.
    """
    drop_last = len(ctx.train_images) >= batch_size
    loader = ctx.train_images.loader(
        batch_size, augment=True, shuffle=True, generator=ctx.generator, drop_last=drop_last
    )
    for images, labels in loader:
        yield images.to(ctx.device), labels.to(ctx.device)


def fit_sgd(
    ctx: FitContext,
    params: Iterable[torch.nn.Parameter],
    cfg: SGDConfig,
    name: str,
    batches: Callable[[int], Iterable[Batch]],
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    end_epoch: Callable[[int], None] | None = None,
) -> None:
    """Train ``params`` for ``cfg.epochs`` epochs with Dassl's SGD and warm-up cosine schedule.

    ``batches(epoch)`` yields the (inputs, labels) of one epoch, ``loss(inputs, labels)``
    is computed under the run's autocast, and ``end_epoch(epoch)`` runs after each epoch's
    schedule step. The last epoch is kept (no selection).
    """
    if cfg.epochs == 0:
        return
    optimizer, scheduler = sgd_with_schedule(params, cfg)
    for epoch in ctx.epochs(cfg.epochs, name):
        for inputs, labels in batches(epoch):
            with ctx.autocast():
                value = loss(inputs, labels)
            optimizer.zero_grad(set_to_none=True)
            value.backward()  # type: ignore[no-untyped-call]
            optimizer.step()
        scheduler.step()  # Dassl steps the schedule once per epoch
        if end_epoch is not None:
            end_epoch(epoch)
