"""Benchmarks run with `python -m pytest benchmarks` (not part of the default test run).

Each benchmark measures a fast path with pytest-benchmark and its baseline in the same run,
and records the ratio in the benchmark's extra_info (shown by --benchmark-verbose and saved
with --benchmark-autosave). Where the machine is shared with other work, :func:`interleaved`
alternates the fast path and its baselines, so both see the same load.

Torch runs on ``$FEWSHOT_BENCH_THREADS`` threads (default 1): on a small machine shared with
other work, a second thread makes every operation wait for the slower of two threads, and
small operations (the shared-prefix path is made of smaller ones than its baselines) then
take several times longer from one run to the next.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import torch

torch.set_num_threads(int(os.environ.get("FEWSHOT_BENCH_THREADS", "1")))


def best_of(fn: Callable[[], object], rounds: int = 3, *, warmup: bool = True) -> float:
    """Fastest wall time of ``rounds`` calls of ``fn`` (seconds), after one warm-up call
    (``warmup=False``: none, for calls of minutes)."""
    if warmup:
        fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def interleaved(
    benchmark: Any,
    fast: Callable[[], object],
    baselines: dict[str, Callable[[], object]],
    rounds: int,
    warmup_rounds: int = 1,
) -> dict[str, float]:
    """Benchmark ``fast``; before each of its rounds (warm-up rounds too) run every baseline
    once, timed. Returns the fastest time of each baseline, and of ``fast`` under "fast"."""
    times: dict[str, list[float]] = {name: [] for name in baselines}

    def run_baselines() -> None:
        for name, fn in baselines.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)

    load = os.getloadavg()[0]
    benchmark.pedantic(fast, setup=run_baselines, rounds=rounds, warmup_rounds=warmup_rounds, iterations=1)
    benchmark.extra_info.update({"load_avg_1min_before": load, "load_avg_1min_after": os.getloadavg()[0]})
    return {name: min(t) for name, t in times.items()} | {"fast": benchmark.stats.stats.min}
