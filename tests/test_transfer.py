"""Cross-dataset transfer and domain generalisation on the toy world.

Protocols: docs/methods.md#cross-dataset-transfer and #domain-generalisation.

One fit on the source, one record per evaluated dataset (the source and each target),
through the real runner, datasets and feature cache.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from fewshot.cli import app
from fewshot.datasets import get_dataset
from fewshot.leaderboard import build_leaderboard
from fewshot.protocols import transfer_plan
from fewshot.results import read_record
from fewshot.sweeps import sweep
from fewshot.types import ConfigError, RunSpec


def test_transfer_plan_defaults_on_the_toy_suite() -> None:
    assert transfer_plan("cross-dataset", ["toy"]) == (
        "toy-objects",
        ("toy-shapes", "toy-colors", "toy-textures"),
    )
    assert transfer_plan("domain-generalization", ["toy"]) == ("toy-shapes", ("toy-shapes-sketch",))
    assert transfer_plan("domain-generalization", ["toy-shift"]) == ("toy-shapes", ("toy-shapes-sketch",))
    # A source alone: the other members of its suite are the targets.
    assert transfer_plan("cross-dataset", ["toy-colors"]) == (
        "toy-colors",
        ("toy-shapes", "toy-textures", "toy-objects"),
    )
    # An explicit source; the targets are the others given.
    assert transfer_plan("cross-dataset", ["toy-colors", "toy-shapes"], source="toy-shapes") == (
        "toy-shapes",
        ("toy-colors",),
    )


def test_transfer_plan_errors_name_the_fix() -> None:
    with pytest.raises(ConfigError, match="has shifted domains"):
        transfer_plan("domain-generalization", ["toy-colors"])
    with pytest.raises(ConfigError, match="needs target datasets"):
        transfer_plan("cross-dataset", ["toy-shapes-sketch"])
    with pytest.raises(ConfigError, match="Unknown dataset"):
        transfer_plan("cross-dataset", ["toy"], source="imagenett")


def _specs(method: str, protocol: str, source: str, targets: tuple[str, ...], **kw: object) -> list[RunSpec]:
    return [
        RunSpec(method, source, shots=4, seed=1, protocol=protocol, target=t, **kw)  # type: ignore[arg-type]
        for t in ("", *targets)
    ]


def test_cross_dataset_writes_one_record_per_target_and_matches_direct_zeroshot(
    tmp_path: Path, feature_cache
) -> None:
    source, targets = transfer_plan("cross-dataset", ["toy"])
    results = sweep(
        _specs("zeroshot", "cross-dataset", source, targets), results_dir=tmp_path, cache=feature_cache
    )
    assert [r.spec.target for r in results] == ["", *targets]
    assert all(r.ok for r in results), [r.error for r in results]
    assert set(results[0].metrics) == {"all"}
    for result in results[1:]:
        assert set(result.metrics) == {result.spec.target}
        target = get_dataset(result.spec.target)
        assert result.provenance["target_split_hash"] == target.splits().hash
        assert result.provenance["target_dataset_version"] == target.spec().version
    assert len(list(tmp_path.rglob("*.json"))) == 1 + len(targets)

    # Zero-shot has nothing to fit: its score on a target is its few-shot score there.
    direct = sweep(
        [RunSpec("zeroshot", t, shots=4, seed=1) for t in targets],
        results_dir=tmp_path / "d",
        cache=feature_cache,
    )
    for transfer, plain in zip(results[1:], direct, strict=True):
        assert transfer.metrics[transfer.spec.target] == pytest.approx(plain.metrics["all"])


def test_one_fit_serves_every_target_and_resume_recomputes_only_missing(
    tmp_path: Path, feature_cache
) -> None:
    specs = _specs(
        "coop", "domain-generalization", "toy-shapes", ("toy-shapes-sketch",), overrides=(("epochs", "3"),)
    )
    first = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert all(r.ok for r in first)
    # Both records come from the same fit: the same fit costs, own evaluation costs.
    assert first[0].costs["fit_time_s"] == first[1].costs["fit_time_s"]
    assert first[0].costs["trainable_params"] == first[1].costs["trainable_params"] > 0
    assert first[1].costs["images_encoded"] >= 0 and "eval_time_s" in first[1].costs

    source_path, target_path = (s.record_path(tmp_path) for s in specs)
    kept = source_path.read_bytes()
    target_path.unlink()
    again = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert source_path.read_bytes() == kept  # a recorded result is never rewritten
    # Same seed, same fit: the recomputed target record has the same score.
    assert again[1].metrics == first[1].metrics
    assert read_record(target_path).metrics == first[1].metrics


def test_closed_set_methods_score_only_targets_within_their_classes(tmp_path: Path, feature_cache) -> None:
    specs = _specs("linear-probe", "cross-dataset", "toy-colors", ("toy-shapes",))
    source, target = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert source.ok and source.metrics["all"] is not None
    assert target.ok and target.metrics == {"toy-shapes": None}  # other classes: not applicable
    # A shifted domain has the source's classes (as ImageNet-A has 200 of ImageNet's): scored.
    specs = _specs("linear-probe", "domain-generalization", "toy-shapes", ("toy-shapes-sketch",))
    _, shifted = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert shifted.ok and shifted.metrics["toy-shapes-sketch"] is not None


def test_cli_domain_generalization_on_the_toy_suite_and_leaderboard(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            *("run", "-m", "zeroshot", "--protocol", "domain-generalization", "--suite", "toy"),
            *("--shots", "2", "--seeds", "1,2", "--results", str(runs)),
        ],
    )
    assert result.exit_code == 0, result.output
    records = sorted(p.name for p in runs.rglob("*.json"))
    # Zero-shot reads no support images: planned at 0 shots whatever --shots says.
    assert records == [
        "domain-generalization-k0-s1-to-toy-shapes-sketch.json",
        "domain-generalization-k0-s1.json",
        "domain-generalization-k0-s2-to-toy-shapes-sketch.json",
        "domain-generalization-k0-s2.json",
    ]
    assert all(p.parent.parent.parent.name == "toy-shapes" for p in runs.rglob("*.json"))
    lb = build_leaderboard(runs)
    row = lb.transfer["domain-generalization"].iloc[0]
    assert row["Trained on"] == "toy-shapes" and row["Targets"] == "1/1"
    assert row["toy-shapes-sketch"] != "—" and row["Mean over targets"] == row["toy-shapes-sketch"].split()[0]


def test_cli_source_only_with_transfer_protocols(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["run", "-m", "zeroshot", "--source", "toy-shapes", "--results", str(tmp_path)]
    )
    assert result.exit_code != 0
    assert "--source applies to --protocol cross-dataset or domain-generalization" in result.output
    assert not list(tmp_path.rglob("*.json"))


def test_domain_generalization_over_the_real_imagenet_readers(tmp_path: Path) -> None:
    """ImageNet -> V2, Sketch, A, R through the real readers on fake trees in their layouts:
    one record per shift, A and R scored over their class subsets (also by a closed-set probe)."""
    from . import _fake_trees as trees

    data = tmp_path / "data"
    for build in (
        trees.imagenet,
        trees.imagenet_v2,
        trees.imagenet_sketch,
        trees.imagenet_a,
        trees.imagenet_r,
    ):
        build(data)
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            *("run", "-m", "zeroshot,linear-probe", "--protocol", "domain-generalization", "-d", "imagenet"),
            *("--shots", "2", "--seeds", "1", "--data-root", str(data), "--results", str(runs)),
            *("--cache-dir", str(tmp_path / "cache")),
        ],
    )
    assert result.exit_code == 0, result.output
    records = {p: read_record(p) for p in runs.rglob("*.json")}
    shifts = ("imagenet-v2", "imagenet-sketch", "imagenet-a", "imagenet-r")
    assert len(records) == 2 * (1 + len(shifts))
    for record in records.values():
        assert record.ok, record.error
        assert record.spec.dataset == "imagenet"
        if record.spec.target:
            score = record.metrics[record.spec.target]
            assert score is not None and 0.0 <= score <= 100.0


@pytest.mark.parametrize("protocol", ["cross-dataset", "domain-generalization"])
def test_cli_maple_transfer_on_the_toy_suite_writes_one_record_per_target(
    tmp_path: Path, protocol: str
) -> None:
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "-m",
            "maple",
            "--protocol",
            protocol,
            "--shots",
            "4",
            "--seeds",
            "1",
            "--results",
            str(runs),
        ],
    )
    assert result.exit_code == 0, result.output
    source, targets = transfer_plan(protocol, ["toy"])
    records = [read_record(p) for p in runs.rglob("*.json")]
    assert sorted(r.spec.target for r in records) == sorted(["", *targets])
    for record in records:
        assert record.ok and record.spec.dataset == source and record.config["depth"] == 3  # transfer preset
        assert list(record.metrics) == [record.spec.target or "all"]
        assert record.costs["trainable_params"] > 0 and record.costs["images_encoded"] > 0


def test_an_evaluation_only_shift_is_never_trained_on(tmp_path: Path) -> None:
    """ImageNet-A's train split is its test set: fitting on it would train on test images."""
    from . import _fake_trees as trees

    trees.imagenet_a(tmp_path / "data")
    runs = tmp_path / "runs"
    result = CliRunner().invoke(
        app,
        [
            "run",
            "-m",
            "zeroshot",
            "-d",
            "imagenet-a",
            "--data-root",
            str(tmp_path / "data"),
            "--results",
            str(runs),
        ],
    )
    assert result.exit_code == 2
    assert "imagenet-a is evaluation-only" in result.output and "domain-generalization" in result.output
    assert not runs.exists() or not list(runs.rglob("*.json"))
