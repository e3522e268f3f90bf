"""End to end on the toy world: methods really learn, runs are reproducible and resumable.

These go through the real runner, datasets, backbone and feature cache; nothing is mocked.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import pytest

from fewshot import runner
from fewshot.datasets import SUITES
from fewshot.sweeps import sweep
from fewshot.types import RunResult, RunSpec

TOY = SUITES["toy"]
SEEDS = (1, 2, 3)


def _mean_by_dataset(results: list[RunResult], space: str = "all") -> dict[str, float]:
    values: dict[str, list[float]] = defaultdict(list)
    for result in results:
        assert result.ok, result.error
        values[result.spec.dataset].append(result.metrics[space])
    return {dataset: statistics.mean(v) for dataset, v in values.items()}


def _records(root: Path) -> list[Path]:
    return sorted(root.rglob("*.json"))


@pytest.mark.parametrize("dataset", TOY)
def test_coop_16_shots_beats_zeroshot(tmp_path: Path, feature_cache, dataset: str) -> None:
    """The default CoOp (16 shots, 200 epochs) against zero-shot, mean over seeds 1-3."""
    specs = [RunSpec(m, dataset, shots=16, seed=s) for m in ("zeroshot", "coop") for s in SEEDS]
    results = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    zeroshot = _mean_by_dataset([r for r in results if r.spec.method == "zeroshot"])[dataset]
    coop = _mean_by_dataset([r for r in results if r.spec.method == "coop"])[dataset]
    assert coop > zeroshot, (dataset, coop, zeroshot)
    assert len(_records(tmp_path)) == len(specs)


@pytest.mark.parametrize("dataset", TOY)
def test_linear_probe_improves_with_shots(tmp_path: Path, feature_cache, dataset: str) -> None:
    specs = [RunSpec("linear-probe", dataset, shots=k, seed=s) for k in (1, 16) for s in SEEDS]
    results = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    one = _mean_by_dataset([r for r in results if r.spec.shots == 1])[dataset]
    sixteen = _mean_by_dataset([r for r in results if r.spec.shots == 16])[dataset]
    assert sixteen > one + 5, (dataset, one, sixteen)


def test_same_seed_gives_identical_results(tmp_path: Path, feature_cache) -> None:
    spec = RunSpec("coop", "toy-colors", shots=4, seed=2, overrides=(("epochs", "5"),))
    first = runner.run(spec, cache=feature_cache)
    second = runner.run(spec, cache=feature_cache)
    assert first.metrics == second.metrics
    other_seed = runner.run(RunSpec("coop", "toy-colors", shots=4, seed=3, overrides=(("epochs", "5"),)))
    assert other_seed.provenance["subset_hash"] != first.provenance["subset_hash"]


def test_interrupted_sweep_resumes_with_one_record_per_run(
    tmp_path: Path, feature_cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    specs = [RunSpec("zeroshot", d, shots=2, seed=s) for d in TOY[:2] for s in SEEDS]
    real_run, calls = runner.run_fit, []

    def interrupted(fit_specs: list[RunSpec], **kwargs: object) -> list[RunResult]:
        if len(calls) == 3:
            raise KeyboardInterrupt
        calls.append(fit_specs)
        return real_run(fit_specs, **kwargs)

    monkeypatch.setattr(runner, "run_fit", interrupted)
    with pytest.raises(KeyboardInterrupt):
        sweep(specs, results_dir=tmp_path, cache=feature_cache)
    written = {p: p.stat().st_mtime_ns for p in _records(tmp_path)}
    assert len(written) == 3

    monkeypatch.setattr(runner, "run_fit", real_run)
    results = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    records = _records(tmp_path)
    assert len(records) == len(specs) == len(results)
    assert sorted(p.relative_to(tmp_path) for p in records) == sorted(s.record_path(Path()) for s in specs)
    for path, mtime in written.items():  # the runs finished before the interrupt were not redone
        assert path.stat().st_mtime_ns == mtime


def test_base2novel_reports_base_novel_and_not_applicable(tmp_path: Path, feature_cache) -> None:
    fast = (("epochs", "20"),)
    specs = [
        RunSpec("coop", "toy-shapes", shots=16, seed=1, protocol="base2novel", overrides=fast),
        RunSpec("linear-probe", "toy-shapes", shots=16, seed=1, protocol="base2novel"),
    ]
    coop, probe = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert set(coop.metrics) == {"base", "novel"}
    assert all(0 <= v <= 100 for v in coop.metrics.values())
    assert probe.metrics["novel"] is None and probe.metrics["base"] > 0
    record = json.loads(probe.spec.record_path(tmp_path).read_text())
    assert record["metrics"]["novel"] is None


def test_failing_run_writes_failure_record_and_sweep_continues(tmp_path: Path, feature_cache) -> None:
    broken = tmp_path / "broken.py"
    broken.write_text(
        "from fewshot.methods.zeroshot import ZeroShot\n"
        "class Broken(ZeroShot):\n"
        "    def fit(self, ctx):\n"
        "        raise RuntimeError('diverged on purpose')\n"
    )
    specs = [RunSpec(f"{broken}:Broken", "toy-shapes", shots=1), RunSpec("zeroshot", "toy-shapes", shots=1)]
    failed, ok = sweep(specs, results_dir=tmp_path / "runs", cache=feature_cache)
    assert not failed.ok and "diverged on purpose" in (failed.error or "")
    assert ok.ok
    record = json.loads(specs[0].record_path(tmp_path / "runs").read_text())
    assert record["status"] == "failed" and "diverged on purpose" in record["error"]


def test_views_are_encoded_only_for_methods_that_read_them(tmp_path: Path) -> None:
    from fewshot.datasets import get_dataset
    from fewshot.features import FeatureCache

    splits = get_dataset("toy-shapes").splits()
    classes = len(set(splits.train.labels))
    support, val, test = 4 * classes, 4 * classes, len(splits.test)
    zeroshot = runner.run(
        RunSpec("zeroshot", "toy-shapes", shots=4, aug_views=3), cache=FeatureCache(tmp_path)
    )
    assert zeroshot.costs["images_encoded"] == support + val + test
    coop = runner.run(
        RunSpec("coop", "toy-shapes", shots=4, aug_views=3, overrides=(("epochs", "1"),)),
        cache=FeatureCache(tmp_path),
    )
    assert coop.costs["images_encoded"] == 3 * support  # everything else came from the cache
