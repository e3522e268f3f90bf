"""Shared end-to-end helpers: real sweeps on the toy world (no mocks)."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from fewshot.sweeps import sweep
from fewshot.types import RunResult, RunSpec

SEEDS = (1, 2, 3)


def base2novel(
    tmp_path: Path, cache: object, method: str, overrides: tuple[tuple[str, str], ...]
) -> tuple[dict[str, float], dict[str, float]]:
    """Mean base and novel accuracy of ``method`` and of zero-shot, seeds 1-3, 16 shots."""
    specs = [
        RunSpec(m, "toy-objects", shots=16, seed=s, protocol="base2novel", overrides=o)
        for m, o in (("zeroshot", ()), (method, overrides))
        for s in SEEDS
    ]
    results = sweep(specs, results_dir=tmp_path, cache=cache)

    def mean(runs: list[RunResult]) -> dict[str, float]:
        assert all(r.ok for r in runs), [r.error for r in runs]
        assert all(set(r.metrics) == {"base", "novel"} for r in runs)
        assert all(0 <= v <= 100 for r in runs for v in r.metrics.values() if v is not None)
        return {space: statistics.mean(r.metrics[space] for r in runs) for space in ("base", "novel")}

    return mean([r for r in results if r.spec.method == method]), mean(
        [r for r in results if r.spec.method == "zeroshot"]
    )


def newer_schema_record(runs: Path) -> Path:
    """A zero-shot record of toy-colors seed 1 in ``runs``, made to look written by a newer
    fewshot (schema version 99); returns its path."""
    spec = RunSpec("zeroshot", "toy-colors", shots=0, seed=1)
    sweep([spec], results_dir=runs)
    path = spec.record_path(runs)
    data = json.loads(path.read_text())
    data["schema_version"] = 99
    path.write_text(json.dumps(data))
    return path
