"""GPU check of the fast paths: one short run, one JSON object on stdout.

    python benchmarks/gpu_check.py                       # one CUDA GPU, under 5 minutes
    python benchmarks/gpu_check.py --device cpu --quick  # the same code at toy sizes, on CPU

Random ViT-B-16 weights (the cost of the OpenAI ones) and synthetic images; nothing is
downloaded. Measured (seconds are medians over repeated calls, after a warm-up, with the
device synchronised):

- ``extraction`` (one timed call each): ``fewshot.encoding.encode_items`` on 500x375 JPEGs written to a temp
  folder (decode, test transform, encode, write to a fresh cache) for several DataLoader
  settings, against the bare encoder on the same images preloaded on the device; fp32 and
  under autocast; images per second.
- ``coop``: a CoOp step (batch 32, M = 16) on cached features as fewshot runs it
  (``default``: the path ``SharedPrefixPlan.pays`` picks on this device), with the shared
  prefix forced, with every prompt run in full, and the official loop's step (image encoder
  on 32 images + the text encoder over all 77 positions), at C = 100 and 1000; seconds and
  peak memory (MiB). ``shared_forced`` against ``full_path`` calibrates
  ``fewshot.prompting._shared.ACCELERATOR_PASS_COST``.
- ``maple``: a MaPLe step (batch 4, C = 100) on images: default, shared prefix forced, full.
- ``precision``: CoOp's and MaPLe's logits on one batch under fp16 autocast (bf16 on CPU)
  against fp32: max abs difference and top-1 agreement.

With no CUDA device (and ``--device cuda``, the default) it says so and exits with 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from benchmarks._fixtures import (
    JpegFolder,
    classnames,
    feature_context,
    forced_shared,
    full_path,
    random_backbone,
    write_jpegs,
)
from fewshot import prompting
from fewshot.backbones import Backbone
from fewshot.encoding import encode_items
from fewshot.features import FeatureCache
from fewshot.methods.coop import CoOp, CoOpConfig
from fewshot.methods.maple import MaPLe, MaPLeConfig

FULL = {"images": 512, "classes": [100, 1000], "batch": 32, "maple_batch": 4, "repeats": 5, "workers": [0, 8]}
QUICK = {"images": 8, "classes": [10], "batch": 4, "maple_batch": 2, "repeats": 1, "workers": [0, 1]}


class Clock:
    """Timings and peak memory on one device."""

    def __init__(self, device: torch.device, repeats: int) -> None:
        self.device, self.repeats = device, repeats

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self, fn: Callable[[], object], repeats: int | None = None) -> dict[str, float | None]:
        """Median seconds of ``fn`` after one warm-up call, and the peak memory of the calls."""
        fn()
        self.sync()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        times = []
        for _ in range(repeats or self.repeats):
            start = time.perf_counter()
            fn()
            self.sync()
            times.append(time.perf_counter() - start)
        peak = torch.cuda.max_memory_allocated(self.device) / 2**20 if self.device.type == "cuda" else None
        return {"s": statistics.median(times), "peak_mib": peak}


def amp(device: torch.device) -> Callable[[], AbstractContextManager[Any]]:
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16
    return lambda: torch.autocast(device.type, dtype=dtype)


# ------------------------------------------------------------------------------------------
# Feature extraction


def extraction(backbone: Backbone, clock: Clock, sizes: dict[str, Any], root: Path) -> dict[str, Any]:
    count = sizes["images"]
    items = write_jpegs(root / "jpegs", classes=max(1, count // 4), per_class=4)
    folder = JpegFolder(root / "jpegs", items, classnames(max(1, count // 4)))
    pixels = torch.stack([backbone.preprocess(folder.load_image(it)) for it in items]).to(backbone.device)
    caches = iter(range(10**6))
    result: dict[str, Any] = {"images": len(items)}
    for name, context in (("fp32", nullcontext), ("autocast", amp(clock.device))):

        def bare(context: Callable[[], AbstractContextManager[Any]] = context) -> None:
            with context():
                for chunk in pixels.split(256):
                    backbone.encode_images(chunk)

        timing = clock.measure(bare, repeats=1)
        result[f"bare_{name}_images_per_s"] = len(items) / timing["s"]  # type: ignore[operator]
        for workers in sizes["workers"]:

            def harness(
                context: Callable[[], AbstractContextManager[Any]] = context, workers: int = workers
            ) -> None:
                cache = FeatureCache(root / f"cache-{next(caches)}")  # fresh: always computed
                with context():
                    encode_items(backbone, folder, items, cache=cache, num_workers=workers)

            timing = clock.measure(harness, repeats=1)
            rate = len(items) / timing["s"]  # type: ignore[operator]
            result[f"encode_items_{name}_workers{workers}_images_per_s"] = rate
            result[f"encode_items_{name}_workers{workers}_fraction_of_bare"] = (
                rate / result[f"bare_{name}_images_per_s"]
            )
    return result


# ------------------------------------------------------------------------------------------
# Training steps


def _sgd_step(params: list[torch.Tensor], loss: Callable[[], torch.Tensor]) -> Callable[[], None]:
    optimizer = torch.optim.SGD(params, lr=1e-6, momentum=0.9, weight_decay=5e-4)

    def step() -> None:
        value = loss()
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()

    return step


def _in(context: Callable[[], AbstractContextManager[Any]], fn: Callable[[], None]) -> Callable[[], None]:
    def run() -> None:
        with context():
            fn()

    return run


def coop(backbone: Backbone, clock: Clock, sizes: dict[str, Any]) -> dict[str, Any]:
    return {
        f"C{classes}": _coop_steps(backbone, clock, classes, sizes["batch"]) for classes in sizes["classes"]
    }


def _coop_steps(backbone: Backbone, clock: Clock, classes: int, batch: int) -> dict[str, Any]:
    autocast, device, names = amp(clock.device), clock.device, classnames(classes)
    adapter = CoOp(CoOpConfig(epochs=0))
    adapter.fit(feature_context(backbone, names))
    prompts, fresh = adapter.prompts_for(names), _fresh(adapter.prompts_for(names))
    features = torch.randn(batch, backbone.embed_dim, device=device)
    labels = torch.arange(batch, device=device) % classes
    images = torch.randn(batch, 3, 224, 224, device=device)
    assert adapter.learner is not None
    params = list(adapter.learner.parameters())
    cached = _sgd_step(params, lambda: adapter._batch_loss(features, labels, prompts))
    forced = _sgd_step(params, lambda: adapter._batch_loss(features, labels, fresh))
    official = _sgd_step(params, lambda: _official_loss(backbone, adapter, prompts, images, labels))
    return {
        "cached_default": clock.measure(_in(autocast, cached)),
        "cached_shared_forced": clock.measure(_in(lambda: _both(autocast(), forced_shared()), forced)),
        "cached_full_path": clock.measure(_in(lambda: _both(autocast(), full_path()), cached)),
        "official_online_77": clock.measure(_in(autocast, official)),
    }


def _fresh(prompts: prompting.ClassPrompts) -> prompting.ClassPrompts:
    """The same prompts without a plan yet (plans are kept per prompts object)."""
    return dataclasses.replace(prompts, plans={})


def _both(a: AbstractContextManager[Any], b: AbstractContextManager[Any]) -> AbstractContextManager[Any]:
    from contextlib import ExitStack

    stack = ExitStack()
    stack.enter_context(a)
    stack.enter_context(b)
    return stack


def _official_loss(
    backbone: Backbone,
    adapter: CoOp,
    prompts: prompting.ClassPrompts,
    images: torch.Tensor,
    labels: torch.Tensor,
) -> torch.Tensor:
    """The official CoOp step's loss: the image encoder, then the text encoder over all 77
    positions (KaiyangZhou/CoOp@ff61507c trainers/coop.py ``CustomCLIP.forward``)."""
    model = backbone.model
    assert adapter.learner is not None
    image = model.encode_image(images)
    ctx = adapter.learner.ctx.unsqueeze(0).expand(prompts.classes, -1, -1)
    x = prompting.assemble_prompts(prompts, ctx) + model.positional_embedding
    x = model.ln_final(model.transformer(x, attn_mask=model.attn_mask))
    text = x[torch.arange(x.shape[0]), prompts.tokens.argmax(dim=-1).to(x.device)] @ model.text_projection
    logits = model.logit_scale.exp() * F.normalize(image, dim=-1) @ F.normalize(text, dim=-1).t()
    return F.cross_entropy(logits.float(), labels)


def maple(backbone: Backbone, clock: Clock, sizes: dict[str, Any]) -> dict[str, Any]:
    classes = sizes["classes"][0]
    names = classnames(classes)
    adapter = MaPLe(MaPLeConfig(epochs=0))
    adapter.fit(feature_context(backbone, names))
    prompts = adapter.prompts_for(names)
    batch = sizes["maple_batch"]
    images = torch.randn(batch, 3, 224, 224, device=clock.device)
    labels = torch.arange(batch, device=clock.device) % classes
    assert adapter.prompts is not None
    params, fresh = list(adapter.prompts.parameters()), _fresh(prompts)
    step = _sgd_step(params, lambda: adapter._loss(images, labels, prompts))
    forced = _sgd_step(params, lambda: adapter._loss(images, labels, fresh))
    autocast = amp(clock.device)
    return {
        f"C{classes}_batch{batch}": {
            "online_default": clock.measure(_in(autocast, step)),
            "online_shared_forced": clock.measure(_in(lambda: _both(autocast(), forced_shared()), forced)),
            "online_full_path": clock.measure(_in(lambda: _both(autocast(), full_path()), step)),
        }
    }


# ------------------------------------------------------------------------------------------
# Precision


def precision(backbone: Backbone, clock: Clock, sizes: dict[str, Any]) -> dict[str, Any]:
    """fp16-autocast logits (bf16 on CPU) against fp32 on one batch, for CoOp and MaPLe."""
    classes, batch = sizes["classes"][0], sizes["batch"]
    names = classnames(classes)
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(0)).to(clock.device)
    coop_adapter, maple_adapter = CoOp(CoOpConfig(epochs=0)), MaPLe(MaPLeConfig(epochs=0))
    result = {}
    for name, adapter in (("coop", coop_adapter), ("maple", maple_adapter)):
        adapter.fit(feature_context(backbone, names))
        logits = {}
        for mode, context in (("fp32", nullcontext), ("autocast", amp(clock.device))):
            with torch.no_grad(), context():
                if name == "coop":
                    text = coop_adapter._encode(coop_adapter.prompts_for(names))
                    logits[mode] = coop_adapter._logits(backbone.encode_images(images), text).float()
                else:
                    text = maple_adapter._encode_text(maple_adapter.prompts_for(names))
                    logits[mode] = maple_adapter._logits(maple_adapter._encode_images(images), text).float()
        agree = (logits["fp32"].argmax(-1) == logits["autocast"].argmax(-1)).float().mean().item()
        result[name] = {
            "max_abs_diff": (logits["fp32"] - logits["autocast"]).abs().max().item(),
            "top1_agreement": agree,
            "logit_range": (logits["fp32"].max() - logits["fp32"].min()).item(),
        }
    return result


# ------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--quick", action="store_true", help="toy sizes: checks that the code runs")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; nothing measured (use --device cpu --quick to try the code).")
        return 0
    sizes = QUICK if args.quick else FULL
    device = torch.device(args.device)
    torch.manual_seed(0)
    started = time.perf_counter()
    backbone = random_backbone("ViT-B-16", str(device))
    clock = Clock(device, sizes["repeats"])
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "sizes": sizes,
    }
    with tempfile.TemporaryDirectory() as tmp:
        report["extraction"] = extraction(backbone, clock, sizes, Path(tmp))
    report["coop"] = coop(backbone, clock, sizes)
    report["maple"] = maple(backbone, clock, sizes)
    report["precision"] = precision(backbone, clock, sizes)
    report["wall_s"] = time.perf_counter() - started
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
