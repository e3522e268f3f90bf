"""What the benchmarks share: random-weight open_clip backbones and a folder of real-sized JPEGs.

Random weights cost what trained ones cost (same shapes, same operations), and nothing is
downloaded. The JPEGs are 500x375 (the median ImageNet size), smooth random colour fields
with noise, saved at quality 90: about 70 KB each, decoded by PIL as a real dataset's are.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, ClassVar
from unittest import mock

import numpy as np
import open_clip
import torch
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from PIL import Image

from fewshot.backbones import Backbone
from fewshot.datasets.base import Dataset
from fewshot.methods.base import FitContext
from fewshot.prompting import _shared
from fewshot.prompting import prompts as prompts_module
from fewshot.types import BackboneSpec, DatasetSpec, FeatureSet, Item, Split, Splits

JPEG_SIZE = (500, 375)  # width, height


def random_backbone(arch: str, device: str = "cpu") -> Backbone:
    """A randomly initialised open_clip ``arch`` (seeded) with CLIP's test transform."""
    logging.disable(logging.WARNING)  # open_clip warns about random weights
    try:
        torch.manual_seed(0)
        model = open_clip.create_model(arch, pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    preprocess = open_clip.image_transform(224, is_train=False)
    return Backbone(
        BackboneSpec.parse(f"{arch}:openai"), model, preprocess, open_clip.get_tokenizer(arch), device
    )


def classnames(count: int) -> list[str]:
    """The first ``count`` ImageNet class names (CLIP's), as real prompts see them."""
    return list(IMAGENET_CLASSNAMES[:count])


def write_jpegs(root: Path, classes: int, per_class: int, prefix: str = "img", seed: int = 0) -> list[Item]:
    """``classes`` x ``per_class`` JPEGs under ``root``; their items, class-major."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    items = []
    for label in range(classes):
        for i in range(per_class):
            path = f"{prefix}_{label:04d}_{i:03d}.jpg"
            _jpeg(rng).save(root / path, "JPEG", quality=90)
            items.append(Item(path, label))
    return items


def _jpeg(rng: np.random.Generator) -> Image.Image:
    coarse = Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)).resize(JPEG_SIZE, Image.BICUBIC)
    noisy = np.asarray(coarse).astype(np.int16) + rng.integers(-20, 21, (JPEG_SIZE[1], JPEG_SIZE[0], 3))
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


class JpegFolder(Dataset):
    """A flat folder of JPEGs as a fewshot Dataset (train = val = test = ``items``)."""

    name: ClassVar[str] = "bench-jpegs"

    def __init__(self, root: Path, items: list[Item], names: list[str]) -> None:
        super().__init__(root)
        self.items, self.names = tuple(items), tuple(names)

    def spec(self) -> DatasetSpec:
        return DatasetSpec(self.name, self.names, "a photo of a {}.", version=str(len(self.items)))

    def splits(self) -> Splits:
        split = Split("all", self.items)
        return Splits(split, split, split)

    def load_image(self, item: Item) -> Image.Image:
        return read_image(self.path / item.path)

    def image_file(self, item: Item) -> Path | None:
        return self.path / item.path


def read_image(path: Path) -> Image.Image:
    """Dassl's ``read_image``: PIL open, then RGB."""
    with Image.open(path) as image:
        return image.convert("RGB")


def feature_context(backbone: Backbone, names: list[str], rows: int = 4) -> FitContext:
    """A FitContext over ``names`` with ``rows`` random support features (no images): enough
    to fit a method with 0 epochs and then time its training steps."""
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(rows, backbone.embed_dim, generator=gen).to(backbone.device)
    labels = torch.arange(rows) % len(names)
    support = FeatureSet(features, labels, tuple(str(i) for i in range(rows)))
    return FitContext(
        classnames=names,
        template="a photo of a {}.",
        templates=[],
        backbone=backbone,
        train=support,
        train_views=support,
        val=support,
        train_images=None,  # type: ignore[arg-type]  # 0 epochs: never read
        val_images=None,  # type: ignore[arg-type]
        shots=1,
        seed=1,
        generator=torch.Generator().manual_seed(1),
        device=backbone.device,
    )


def full_path() -> AbstractContextManager[Any]:
    """Inside it, every class prompt runs in full (cut after the longest EOT): the shared
    prefix switched off, as fewshot encoded class prompts before it."""
    return mock.patch.object(prompts_module, "shared_prefix_plan", lambda *args, **kwargs: None)


@contextmanager
def forced_shared() -> Iterator[None]:
    """Inside it, plans made for new prompts share the prefix wherever that is exact, on any
    device (no cost per pass): to time the shared path where the device's policy would not
    take it. Prompts whose plan exists already keep it."""
    with (
        mock.patch.dict(_shared.PASS_COST, {"cpu": 0}),
        mock.patch.object(_shared, "ACCELERATOR_PASS_COST", 0),
    ):
        yield
