"""The planned work of a sweep, counted before it runs (``fewshot run --dry-run``).

For each planned fit, on a cold cache:

- **images to encode**: the support and val subsets, the augmented views of the support set
  for methods that train on them, the test split (once per dataset, backbone and precision
  in a sweep: every method, shot count and seed shares it), and the images an image-space
  method (or online augmentation) runs through the encoder at every optimiser step;
- **optimiser steps**: epochs × batches per epoch, as the training loop runs them (the last
  short batch dropped when the support set holds a full batch, as Dassl does);
- **text positions per step**: the prompts a step runs through the text tower, times their
  length up to the end-of-text token (the shared-prefix encoding computes fewer, see
  docs/performance.md).

A method states what one of its steps costs (:meth:`fewshot.methods.base.Adapter.step_cost`);
everything else comes from the resolved config and the dataset's splits. Counting needs the
dataset's splits (class names, sizes): for a dataset that is not present, only what the
config says is shown. Text lengths come from open_clip's tokenizer (the CLIP BPE every
supported text tower uses), imported only when a method runs prompts.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pathlib import Path

    from fewshot.planning import PlannedFit
    from fewshot.types import Splits

__all__ = ["StepCost", "Work", "fit_work", "prompts_with", "sweep_images", "tokens_per_prompt"]


@dataclass(frozen=True)
class StepCost:
    """What one optimiser step of a method runs through the encoders."""

    prompts: tuple[str, ...] = ()  # the prompts that go through the text tower (once each)
    prompt_repeats: int = 1  # times they run per step (CoCoOp: once per image of the batch)
    images: int = 0  # images through the image encoder per step
    reads_views: bool = False  # trains on cached augmented views of the support set
    # Steps per epoch when they do not follow from the support size and ``batch_size``
    # (SgVA-CLIP's episodes: C // train_way per epoch); None = from the support set.
    steps_per_epoch: int | None = None
    passes: int = 1  # passes over the support set per epoch (GIST: one per caption of an image)


@dataclass(frozen=True)
class Work:
    """The work of one fit on a cold cache (see the module docstring)."""

    support: int
    val: int
    views: int
    test: int
    step_images: int  # images through the encoder while training (all steps)
    steps: int
    text_positions: int  # per step

    @property
    def images(self) -> int:
        return self.support + self.val + self.views + self.test + self.step_images


def fit_work(fit: PlannedFit, data_root: Path | None) -> Work | None:
    """The work of one planned fit, or None when its dataset is not present."""
    from fewshot.datasets import get_dataset
    from fewshot.methods import METHODS

    spec = fit.spec
    dataset = get_dataset(spec.dataset, data_root)
    if not dataset.is_present():
        return None
    splits, dspec = dataset.splits(), dataset.spec()
    support, val, classes = _subset_sizes(splits, spec.shots, spec.protocol)
    classnames = [dspec.classnames[label] for label in classes]
    online = spec.aug_views == 0
    cost = METHODS.get(spec.method).step_cost(fit.config, classnames, online)
    steps = _steps(fit.config, support, cost.steps_per_epoch) * cost.passes
    views = spec.aug_views * support if cost.reads_views and not online else 0
    positions = cost.prompt_repeats * sum(tokens_per_prompt(cost.prompts)) if cost.prompts else 0
    return Work(support, val, views, len(splits.test), steps * cost.images, steps, positions)


def _subset_sizes(splits: Splits, shots: int, protocol: str) -> tuple[int, int, list[int]]:
    """Support and val sizes of the few-shot subset (K, or all of a smaller class), and the
    training classes (base classes only in base-to-novel)."""
    from fewshot.protocols import base_novel_labels

    train, val = Counter(splits.train.labels), Counter(splits.val.labels)
    labels = sorted(train)
    if protocol == "base2novel":
        labels = list(base_novel_labels(labels)[0])
    support = sum(min(shots, train[label]) for label in labels)
    val_count = sum(min(min(shots, 4), val[label]) for label in labels)
    return support, val_count, labels


def _steps(config: object, support: int, per_epoch_given: int | None = None) -> int:
    """Optimiser steps of an SGD-trained config (epochs × batches per epoch), else 0."""
    epochs, batch = getattr(config, "epochs", 0), getattr(config, "batch_size", 0)
    if per_epoch_given is not None:
        return int(epochs) * per_epoch_given
    if not epochs or not batch or not support:
        return 0
    per_epoch = support // batch if support >= batch else 1
    return int(epochs) * max(1, per_epoch)


def prompts_with(ctx_init: str, n_ctx: int, classnames: list[str]) -> tuple[str, ...]:
    """The class prompts a learned context is trained in: ``"{init words or X X .. X} {name}."``."""
    prefix = " ".join(ctx_init.replace("_", " ").split()) or " ".join(["X"] * n_ctx)
    return tuple(f"{prefix} {name}." for name in classnames)


def tokens_per_prompt(prompts: tuple[str, ...]) -> list[int]:
    """Each prompt's length in tokens up to and with the end-of-text token (CLIP BPE)."""
    from open_clip.tokenizer import SimpleTokenizer

    tokenizer = SimpleTokenizer()
    return [len(tokenizer.encode(prompt)) + 2 for prompt in prompts]  # + SOS and EOT


def sweep_images(works: list[tuple[PlannedFit, Work]]) -> int:
    """Images a whole sweep encodes on a cold cache: each test split once per (dataset,
    backbone, precision), each support/val subset and its views once per (dataset, shots,
    seed, views), the per-step images of every fit."""
    tests: dict[tuple[str, str, str], int] = {}
    subsets: dict[tuple[object, ...], int] = {}
    steps = 0
    for fit, work in works:
        s = fit.spec
        tests[(s.dataset, s.backbone, s.precision)] = work.test
        subsets[(s.dataset, s.shots, s.seed, s.backbone, s.precision)] = work.support + work.val
        if work.views:
            subsets[(s.dataset, s.shots, s.seed, s.backbone, s.precision, s.aug_views)] = work.views
        steps += work.step_images
    return sum(tests.values()) + sum(subsets.values()) + steps
