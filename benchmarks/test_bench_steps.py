"""One training step of CoCoOp and of MaPLe at C = 100, with and without the shared prefix.

ViT-B-16 with random weights, the first 100 ImageNet class names, each method's default
config (CoCoOp: M = 4 from "a photo of a", batch 1; MaPLe: 2 context tokens, depth 9, batch
4), fitted with 0 epochs to build its prompts. A step is the method's own loss on one batch,
backward, and an SGD step, as ``fit_sgd`` runs it. The baseline is the same step with
:func:`fewshot.prompting.shared_prefix_plan` returning None (every prompt run in full, cut
after the longest EOT: fewshot before shared prefixes).

MaPLe's step is also split into its text part (prompted text features of the 100 classes,
forward + backward) and its image part (the prompted image encoder, forward + backward), to
show what dominates it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext

import pytest
import torch
import torch.nn.functional as F

from fewshot.methods.base import FitContext
from fewshot.methods.cocoop import CoCoOp, CoCoOpConfig
from fewshot.methods.maple import MaPLe, MaPLeConfig

from ._fixtures import classnames, feature_context, full_path, random_backbone
from .conftest import interleaved

CLASSES = 100


@pytest.fixture(scope="module")
def context() -> FitContext:
    return feature_context(random_backbone("ViT-B-16"), classnames(CLASSES))


def _step(
    params: list[torch.Tensor], loss: Callable[[], torch.Tensor], full: bool = False
) -> Callable[[], None]:
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        with full_path() if full else nullcontext():
            value = loss()
            optimizer.zero_grad(set_to_none=True)
            value.backward()
            optimizer.step()

    return step


def test_cocoop_step_shared_prefix(benchmark, context: FitContext) -> None:
    adapter = CoCoOp(CoCoOpConfig(epochs=0))
    adapter.fit(context)
    prompts = adapter.prompts_for(context.classnames)
    features, labels = context.train.features[:1], context.train.labels[:1]  # batch 1

    def loss() -> torch.Tensor:
        return F.cross_entropy(adapter._conditional_logits(features, prompts, "fit"), labels)

    params = list(adapter.learner.parameters())
    times = interleaved(benchmark, _step(params, loss), {"full_path_s": _step(params, loss, full=True)}, 3)
    ratio = times["full_path_s"] / times["fast"]
    benchmark.extra_info.update({**times, "speedup": ratio, "classes": CLASSES})
    fast, full = times["fast"], times["full_path_s"]
    print(f"\nCoCoOp step, C={CLASSES}: {fast:.3f}s shared prefix, {full:.3f}s full: {ratio:.1f}x")


def test_maple_step_shared_prefix_and_its_parts(benchmark, context: FitContext) -> None:
    adapter = MaPLe(MaPLeConfig(epochs=0))
    adapter.fit(context)
    prompts = adapter.prompts_for(context.classnames)
    images = torch.randn(4, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(4)
    params = list(adapter.prompts.parameters())

    def text() -> torch.Tensor:
        return adapter._encode_text(prompts).square().mean()

    def image() -> torch.Tensor:
        return adapter._encode_images(images).square().mean()

    times = interleaved(
        benchmark,
        _step(params, lambda: adapter._loss(images, labels, prompts)),
        {
            "full_path_s": _step(params, lambda: adapter._loss(images, labels, prompts), full=True),
            "text_part_s": _step(params, text),
            "image_part_s": _step(params, image),
        },
        rounds=2,
    )
    ratio = times["full_path_s"] / times["fast"]
    benchmark.extra_info.update({**times, "speedup": ratio, "classes": CLASSES})
    fast, full = times["fast"], times["full_path_s"]
    print(
        f"\nMaPLe step, C={CLASSES}, batch 4: {fast:.3f}s shared prefix, {full:.3f}s full ({ratio:.1f}x); "
        f"text part {times['text_part_s']:.3f}s, image part {times['image_part_s']:.3f}s"
    )
