"""The whole CoOp 16-shot schedule at C = 100: the harness path vs an official-style loop.

Data: 100 classes x 16 shots = 1,600 real-sized JPEGs (500x375) written to a temp folder,
plus 4 val images per class (the harness encodes the few-shot val set, as the runner does).
Backbone: ViT-B-32 with random weights. Both sides run ``EPOCHS`` epochs of 50 SGD steps
(batch 32), M = 16 random context, class token at the end, fp32.

- Harness (``fewshot.runner._fit_context`` + CoOp): encode the support set (test transform),
  the val set and V = ``EPOCHS`` augmented views through ``fewshot.features`` into a fresh
  feature cache, then train on the cached views (epoch e reads view e mod V).
- Official-style loop, written here from KaiyangZhou/CoOp@ff61507c trainers/coop.py
  (``PromptLearner``, ``TextEncoder``, ``CustomCLIP.forward``, ``CoOp.forward_backward``) and
  KaiyangZhou/Dassl.pytorch@c61a1b57 (``build_data_loader``: RandomSampler, drop_last;
  ``DatasetWrapper``: ``read_image`` then the transform; ``_build_transform_train``: random
  resized crop scale (0.08, 1) bicubic, random flip, to tensor, normalise): every step
  decodes and augments 32 JPEGs, runs the image encoder, and runs the text encoder over all
  77 positions of the 100 prompts. ``num_workers=0`` (the config asks 8 workers; on two
  cores they would share the same CPUs as the model, for the same total work).

The schedule is shortened equally on both sides (the official 16-shot schedule is 200
epochs). The benchmark also records each side's phases, from which docs/performance.md
extrapolates the 200-epoch schedule (harness: 10 views, as ``--aug-views 10``).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import torchvision.transforms as T
from torch.utils.data import DataLoader, RandomSampler
from torch.utils.data import Dataset as TorchDataset

from fewshot.encoding import SubsetImages, encode_items, encode_views
from fewshot.features import FeatureCache
from fewshot.methods.base import FitContext
from fewshot.methods.coop import CoOp, CoOpConfig
from fewshot.types import Item

from ._fixtures import JpegFolder, classnames, random_backbone, read_image, write_jpegs

CLASSES = 10 if os.environ.get("FEWSHOT_BENCH_QUICK") else 100  # quick: a smoke run of the code
SHOTS, VAL_SHOTS, BATCH, M = 16, 4, 32, 16
EPOCHS = 1  # shortened equally on both sides
FULL_EPOCHS, FULL_VIEWS = 200, 10  # the official 16-shot schedule; the harness's default views


@pytest.fixture(scope="module")
def jpegs(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("jpegs")
    train = _write(root, SHOTS, "train")
    val = _write(root, VAL_SHOTS, "val")
    dataset = JpegFolder(root, train + val, classnames(CLASSES))
    return dataset, train, val, random_backbone("ViT-B-32"), tmp_path_factory


def _write(root: Path, shots: int, prefix: str) -> list[Item]:
    return write_jpegs(root, CLASSES, shots, prefix=prefix, seed=len(prefix))


# ------------------------------------------------------------------------------------------
# The harness


def harness(dataset, train: list[Item], val: list[Item], backbone, cache_root: Path) -> dict[str, float]:
    """Features into a fresh cache, then CoOp on the cached views; the time of each phase."""
    cache = FeatureCache(cache_root)
    start = time.perf_counter()
    support = encode_items(backbone, dataset, train, cache=cache)
    val_set = encode_items(backbone, dataset, val, cache=cache)
    views = encode_views(backbone, dataset, train, EPOCHS, cache=cache, seed=1)
    extracted = time.perf_counter()
    relabel = {label: label for label in range(CLASSES)}
    ctx = FitContext(
        classnames=classnames(CLASSES),
        template="a photo of a {}.",
        templates=[],
        backbone=backbone,
        train=support,
        train_views=views,
        val=val_set,
        train_images=SubsetImages(dataset, train, backbone, relabel),
        val_images=SubsetImages(dataset, val, backbone, relabel),
        shots=SHOTS,
        seed=1,
        generator=torch.Generator().manual_seed(1),
        dataset=dataset.name,
    )
    CoOp(CoOpConfig(epochs=EPOCHS, n_ctx=M)).fit(ctx)
    done = time.perf_counter()
    return {
        "extract_s": extracted - start,
        "train_s": done - extracted,
        "images_encoded": float(cache.images_encoded),
    }


# ------------------------------------------------------------------------------------------
# The official-style loop (written from the official code; see the module docstring)


class _Wrapper(TorchDataset[tuple[torch.Tensor, int]]):
    """Dassl's DatasetWrapper: read the image, apply the train transform."""

    def __init__(self, root: Path, items: list[Item]) -> None:
        self.root, self.items = root, items
        self.transform = T.Compose(
            [
                T.RandomResizedCrop(224, scale=(0.08, 1.0), interpolation=T.InterpolationMode.BICUBIC),
                T.RandomHorizontalFlip(),
                T.ToTensor(),
                T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
            ]
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        item = self.items[i]
        return self.transform(read_image(self.root / item.path)), item.label


class _OfficialCoOp:
    """CoOp's PromptLearner (generic context, class token at the end) + TextEncoder + CustomCLIP."""

    def __init__(self, backbone, names: list[str]) -> None:
        self.model = backbone.model
        self.ctx = torch.nn.Parameter(torch.empty(M, 512).normal_(0.0, 0.02))
        tokens = backbone.tokenize([" ".join(["X"] * M) + " " + name + "." for name in names])
        with torch.no_grad():
            embedding = self.model.token_embedding(tokens)
        self.token_prefix, self.token_suffix = embedding[:, :1], embedding[:, 1 + M :]
        self.tokens = tokens

    def text_features(self) -> torch.Tensor:
        ctx = self.ctx.unsqueeze(0).expand(len(self.tokens), -1, -1)
        x = torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1) + self.model.positional_embedding
        x = self.model.transformer(x, attn_mask=self.model.attn_mask)  # all 77 positions
        x = self.model.ln_final(x)
        return x[torch.arange(x.shape[0]), self.tokens.argmax(dim=-1)] @ self.model.text_projection

    def logits(self, images: torch.Tensor) -> tuple[torch.Tensor, float, float]:
        start = time.perf_counter()
        image = self.model.encode_image(images)  # frozen, every step
        encoded = time.perf_counter()
        text = self.text_features()
        image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
        return self.model.logit_scale.exp() * image @ text.t(), encoded - start, time.perf_counter() - encoded


def official(dataset, train: list[Item], backbone) -> dict[str, float]:
    """EPOCHS epochs of the official loop; time spent loading, encoding images, and in the
    text encoder forward + backward + SGD step."""
    torch.manual_seed(1)
    clip = _OfficialCoOp(backbone, classnames(CLASSES))
    data = _Wrapper(dataset.path, train)
    loader = DataLoader(data, batch_size=BATCH, sampler=RandomSampler(data), drop_last=len(data) >= BATCH)
    optimizer = torch.optim.SGD([clip.ctx], lr=0.002, momentum=0.9, weight_decay=5e-4)
    times = {"load_s": 0.0, "image_s": 0.0, "text_s": 0.0, "steps": 0.0}
    for epoch in range(EPOCHS):
        _set_lr(optimizer, epoch)
        for images, labels, loaded in _timed(loader):
            logits, image_s, forward_s = clip.logits(images)
            start = time.perf_counter()
            loss = F.cross_entropy(logits, labels)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            times["load_s"] += loaded
            times["image_s"] += image_s
            times["text_s"] += forward_s + time.perf_counter() - start
            times["steps"] += 1
    return times


def _set_lr(optimizer: torch.optim.Optimizer, epoch: int) -> None:
    """Dassl's constant warm-up (1 epoch at 1e-5), then cosine over the full schedule."""
    lr = 1e-5 if epoch < 1 else 0.5 * 0.002 * (1 + math.cos(math.pi * (epoch - 1) / EPOCHS))
    for group in optimizer.param_groups:
        group["lr"] = lr


def _timed(loader: DataLoader) -> Iterator[tuple[torch.Tensor, torch.Tensor, float]]:
    batches = iter(loader)
    while True:
        start = time.perf_counter()
        try:
            images, labels = next(batches)
        except StopIteration:
            return
        yield images, labels, time.perf_counter() - start


# ------------------------------------------------------------------------------------------


def test_coop_schedule_harness_vs_official_loop(benchmark, jpegs) -> None:
    dataset, train, val, backbone, paths = jpegs
    start = time.perf_counter()
    loop = official(dataset, train, backbone)
    official_s = time.perf_counter() - start
    phases: dict[str, float] = {}

    def run() -> None:
        phases.update(harness(dataset, train, val, backbone, paths.mktemp("cache")))

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    harness_s = benchmark.stats.stats.min
    steps = EPOCHS * (len(train) // BATCH)
    assert loop["steps"] == steps
    info = _extrapolate(loop, official_s, phases, steps, len(train), len(val))
    benchmark.extra_info.update(
        {
            **loop,
            **phases,
            **info,
            "official_s": official_s,
            "harness_s": harness_s,
            "speedup": official_s / harness_s,
        }
    )
    print(
        f"\nCoOp, {EPOCHS} epoch(s) = {steps} steps, C={CLASSES}: harness {harness_s:.0f}s "
        f"(extract {phases['extract_s']:.0f}s, train {phases['train_s']:.0f}s) vs official-style "
        f"{official_s:.0f}s (load {loop['load_s']:.0f}s, image {loop['image_s']:.0f}s, text "
        f"{loop['text_s']:.0f}s): {official_s / harness_s:.1f}x; full {FULL_EPOCHS}-epoch schedule "
        f"(extrapolated): {info['full_official_h']:.1f}h vs {info['full_harness_h']:.1f}h = "
        f"{info['full_speedup']:.1f}x"
    )


def _extrapolate(
    loop: dict[str, float], official_s: float, phases: dict[str, float], steps: int, n_train: int, n_val: int
) -> dict[str, float]:
    """Per-step and per-image costs, and the 200-epoch schedule from them."""
    per_image = phases["extract_s"] / phases["images_encoded"]
    harness_step = phases["train_s"] / steps
    official_step = official_s / steps
    full_steps = FULL_EPOCHS * (n_train // BATCH)
    full_harness = per_image * (n_train * (1 + FULL_VIEWS) + n_val) + full_steps * harness_step
    full_official = full_steps * official_step
    return {
        "extract_per_image_s": per_image,
        "harness_step_s": harness_step,
        "official_step_s": official_step,
        "full_harness_h": full_harness / 3600,
        "full_official_h": full_official / 3600,
        "full_speedup": full_official / full_harness,
    }
