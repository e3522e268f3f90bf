"""Benchmarks run with `python -m pytest benchmarks` (not part of the default test run).

Each benchmark measures a fast path with pytest-benchmark and its baseline in the same run,
and records the ratio in the benchmark's extra_info (shown by --benchmark-verbose and saved
with --benchmark-autosave).
"""

from __future__ import annotations

import time
from collections.abc import Callable


def best_of(fn: Callable[[], object], rounds: int = 3) -> float:
    """Fastest wall time of ``rounds`` calls of ``fn`` (seconds), after one warm-up call."""
    fn()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)
