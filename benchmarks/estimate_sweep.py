"""Estimate the cost of a full ``coop11`` CoOp sweep from measured per-step costs.

    python benchmarks/estimate_sweep.py RUN_JSON [--gpu-tflops 250] [--step-floor-ms 5]

RUN_JSON is the ``--benchmark-json`` output of a run of ``benchmarks/`` that includes
``test_bench_prefix.py``, ``test_bench_features.py`` and ``test_bench_schedule.py``.

The sweep: the 11 datasets of ``coop11``, shots 1, 2, 4, 8, 16, seeds 1-3, CoOp's official
epochs (50 / 100 / 100 / 200 / 200; ImageNet 50 at every shot count), batch 32, M = 16,
ViT-B-16, each run then evaluated on its test split.

Per run, from costs measured on this CPU (seconds):

- official loop: steps x (32 x (decode + augment + encode one image) + text encoder forward
  and backward over all 77 positions of the C prompts) + the test split through the encoder;
- harness: the support set in 1 + 10 views and the val set through decode + encode, once
  (``--aug-views 10``), + steps x (shared-prefix text forward and backward); the test split
  is encoded once per dataset, for all 15 runs.

Text costs at C classes interpolate the measured C = 10, 100, 1000 linearly (the cost is
affine in C). GPU: compute time scales by the ratio of this CPU's measured rate on the
ViT-B-16 image encoder (FLOPs / s) to an assumed GPU rate (``--gpu-tflops``); JPEG decoding
and augmentation stay on the CPU, spread over ``workers`` processes (official: its config's
8; harness: ``fewshot.features``' 0 today, or 8), and a step or an image costs the larger
of its GPU compute and its decoding (in-process decoding, 0 workers, adds to it). A GPU
step of the harness costs at least ``--step-floor-ms``: eager PyTorch dispatches every
operation from the CPU (a CoOp text step: ~410 operations on the full path, ~900 to ~2,700
with a shared prefix, forward and backward), a few microseconds each.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# name: (classes, test images) of CoOp's splits (docs/datasets.md)
COOP11 = {
    "imagenet": (1000, 50000),
    "caltech101": (100, 2465),
    "oxford-pets": (37, 3669),
    "stanford-cars": (196, 8041),
    "flowers102": (102, 2463),
    "food101": (101, 30300),
    "fgvc-aircraft": (100, 3333),
    "sun397": (397, 19850),
    "dtd": (47, 1692),
    "eurosat": (10, 8100),
    "ucf101": (101, 3783),
}
SHOTS, SEEDS, BATCH, VIEWS = (1, 2, 4, 8, 16), 3, 32, 10
VIT_B16_GFLOP = 35.2  # forward, 197 tokens: 2 x 12 x 12 x 768^2 x 197 + attention + patch embedding


def epochs(dataset: str, shots: int) -> int:
    if dataset == "imagenet" or shots == 1:
        return 50
    return 100 if shots <= 4 else 200


def steps(dataset: str, shots: int) -> int:
    n = shots * COOP11[dataset][0]
    return epochs(dataset, shots) * max(1, n // BATCH)  # Dassl drops the last short batch


@dataclass(frozen=True)
class Costs:
    """Seconds on this CPU: per image, and text forward + backward per step at C = 10, 100, 1000."""

    encode: float  # ViT-B-16 forward, one image
    decode_test: float  # JPEG decode + test transform, one image
    decode_aug: float  # JPEG decode + random resized crop + flip + normalise, one image
    full77: dict[int, float]
    shared: dict[int, float]

    @staticmethod
    def at(table: dict[int, float], classes: int) -> float:
        """Linear between the measured class counts (every coop11 dataset has 10 to 1000)."""
        points = sorted(table)
        return float(np.interp(classes, points, [table[p] for p in points]))


def load(run: Path) -> Costs:
    found = {b["name"]: b["extra_info"] for b in json.loads(run.read_text())["benchmarks"]}
    text = {v["classes"]: v for k, v in found.items() if k.startswith("test_shared_prefix_text")}
    feats = found["test_feature_extraction_vs_bare_encoder[ViT-B-16]"]
    sched = found["test_coop_schedule_harness_vs_official_loop"]
    return Costs(
        encode=1.0 / feats["bare_images_per_s_b256"],
        decode_test=feats["decode_transform_s_per_image"],
        decode_aug=sched["load_s"] / (sched["steps"] * BATCH),
        full77={c: v["full77_s"] for c, v in text.items()},
        shared={c: v["shared_s"] for c, v in text.items()},
    )


@dataclass(frozen=True)
class Machine:
    """How a cost on this CPU becomes a cost on the target: compute / speedup; decoding / workers."""

    speedup: float  # 1 = this CPU
    workers_official: int
    workers_harness: int
    step_floor: float = 0.0

    def image(self, costs: Costs, decode: float, workers: int) -> float:
        return self.step(costs.encode, decode, workers, floor=0.0)

    def step(
        self, compute: float, decode: float = 0.0, workers: int = 0, floor: float | None = None
    ) -> float:
        """In-process decoding (0 workers) adds to the compute; worker processes overlap it."""
        compute = max(compute / self.speedup, self.step_floor if floor is None else floor)
        return compute + decode if workers == 0 else max(compute, decode / workers)


def sweep_hours(costs: Costs, machine: Machine) -> dict[str, tuple[float, float]]:
    """(official, harness) hours per dataset for 5 shot counts x 3 seeds."""
    out = {}
    for dataset, (classes, test) in COOP11.items():
        official = harness = 0.0
        test_official = test * machine.image(costs, costs.decode_test, machine.workers_official)
        test_harness = test * machine.image(costs, costs.decode_test, machine.workers_harness)
        harness += test_harness  # once per dataset
        for shots in SHOTS:
            n, val = shots * classes, min(shots, 4) * classes
            step_official = machine.step(
                BATCH * costs.encode + costs.at(costs.full77, classes),
                BATCH * costs.decode_aug,
                machine.workers_official,
            )
            official += SEEDS * (steps(dataset, shots) * step_official + test_official)
            extract = n * VIEWS * machine.image(costs, costs.decode_aug, machine.workers_harness)
            extract += (n + val) * machine.image(costs, costs.decode_test, machine.workers_harness)
            harness += SEEDS * (
                extract + steps(dataset, shots) * machine.step(costs.at(costs.shared, classes))
            )
        out[dataset] = (official / 3600, harness / 3600)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_json", type=Path)
    parser.add_argument("--gpu-tflops", type=float, default=250.0, help="assumed sustained GPU rate")
    parser.add_argument("--step-floor-ms", type=float, default=5.0, help="least time of one GPU step")
    args = parser.parse_args(argv)
    costs = load(args.run_json)
    cpu_tflops = VIT_B16_GFLOP / costs.encode / 1000
    speedup = args.gpu_tflops / cpu_tflops
    print(f"measured: {costs}\nthis CPU on the ViT-B-16 encoder: {cpu_tflops * 1000:.1f} GFLOP/s")
    print(f"GPU assumed at {args.gpu_tflops:.0f} TFLOP/s: compute {speedup:.0f}x this CPU's\n")
    machines = {
        "CPU (this machine, measured costs)": Machine(1.0, 0, 0),
        "GPU, harness workers 0 (today)": Machine(speedup, 8, 0, args.step_floor_ms / 1000),
        "GPU, harness workers 8": Machine(speedup, 8, 8, args.step_floor_ms / 1000),
    }
    for name, machine in machines.items():
        hours = sweep_hours(costs, machine)
        official, harness = sum(o for o, _ in hours.values()), sum(h for _, h in hours.values())
        print(
            f"{name}: official {official:,.1f} h, harness {harness:,.1f} h, ratio {official / harness:.1f}x"
        )
        for dataset, (o, h) in hours.items():
            print(f"    {dataset:14s} official {o:10,.2f} h   harness {h:8,.2f} h")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
