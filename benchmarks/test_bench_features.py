"""Feature extraction throughput: ``fewshot.encoding.encode_items`` vs the bare image encoder.

``encode_items`` decodes each JPEG (500x375), runs the test transform (CLIP's: bicubic
resize, centre crop, normalise), encodes it and writes the features to a fresh feature
cache. The baseline runs only the image encoder, on the same images preloaded as
preprocessed tensors, in batches of the same size. Throughput = images per second.

Also measured, for the DataLoader settings of ``fewshot.features`` (batch 256, no worker
processes; pinned memory only on CUDA, which this machine lacks): 32-image batches, and
1 or 2 worker processes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from fewshot.encoding import encode_items
from fewshot.features import FeatureCache

from ._fixtures import JpegFolder, classnames, random_backbone, write_jpegs
from .conftest import best_of, interleaved

IMAGES = 32 if os.environ.get("FEWSHOT_BENCH_QUICK") else 128
SETTINGS = [(32, 0), (32, 1), (32, 2)]  # (batch_size, num_workers) besides the default (256, 0)


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> JpegFolder:
    root = tmp_path_factory.mktemp("jpegs")
    items = write_jpegs(root, classes=IMAGES // 4, per_class=4)
    return JpegFolder(root, items, classnames(IMAGES // 4))


@pytest.mark.parametrize("arch", ["ViT-B-16", "ViT-B-32"])
def test_feature_extraction_vs_bare_encoder(benchmark, folder, arch, tmp_path: Path) -> None:
    backbone = random_backbone(arch)
    items = list(folder.items)
    pixels = torch.stack([backbone.preprocess(folder.load_image(item)) for item in items])
    caches = iter(range(1000))

    def extract(batch_size: int = 256, workers: int = 0) -> None:
        cache = FeatureCache(tmp_path / f"cache-{next(caches)}")  # fresh: always computed
        encode_items(backbone, folder, items, cache=cache, batch_size=batch_size, num_workers=workers)

    def bare(batch_size: int = 256) -> None:
        for chunk in pixels.split(batch_size):
            backbone.encode_images(chunk)

    quick = bool(os.environ.get("FEWSHOT_BENCH_QUICK"))
    baselines = {"bare_b256": bare, "bare_b32": lambda: bare(32)}
    for size, workers in SETTINGS:
        baselines[f"b{size}_w{workers}"] = lambda s=size, w=workers: extract(s, w)
    times = interleaved(benchmark, extract, baselines, rounds=1 if quick else 2)
    bare_s = {256: times.pop("bare_b256"), 32: times.pop("bare_b32")}
    harness = {"default_b256_w0": times.pop("fast")} | times
    throughput = {k: len(items) / v for k, v in harness.items()}
    fraction = {k: bare_s[256 if k.startswith("default") else 32] / v for k, v in harness.items()}
    benchmark.extra_info.update(
        {
            "images": len(items),
            "bare_images_per_s_b256": len(items) / bare_s[256],
            "bare_images_per_s_b32": len(items) / bare_s[32],
            **{f"images_per_s_{k}": v for k, v in throughput.items()},
            **{f"fraction_of_bare_{k}": v for k, v in fraction.items()},
            "decode_transform_s_per_image": _decode_cost(folder, backbone),
        }
    )
    print(
        f"\n{arch}: bare encoder {len(items) / bare_s[256]:.2f} img/s (b256), "
        f"{len(items) / bare_s[32]:.2f} img/s (b32); encode_items "
        + ", ".join(f"{k} {throughput[k]:.2f} img/s = {fraction[k]:.0%}" for k in throughput)
    )


def _decode_cost(folder: JpegFolder, backbone) -> float:
    """Seconds per image to decode and run the test transform (no encoder), in this process."""
    items = list(folder.items)[:16]
    return best_of(lambda: [backbone.preprocess(folder.load_image(it)) for it in items], 2) / len(items)
