"""The one plan builder: every input checked before anything runs, for the CLI and the Python
API alike; the Python API (fewshot.plan, fewshot.sweep, fewshot.run) end to end on the toy world."""

from __future__ import annotations

from pathlib import Path

import pytest

import fewshot
from fewshot import RunSpec, run, sweep
from fewshot.planning import PlanError, SweepPlan

PLUGIN = """
from dataclasses import dataclass
import torch
from fewshot.methods.base import Adapter, Needs
from fewshot.types import AdapterConfig


@dataclass(frozen=True)
class OnlyFewShotConfig(AdapterConfig):
    width: int = 1


class OnlyFewShot(Adapter):
    config_cls = OnlyFewShotConfig
    needs = Needs.FEATURES
    protocols = ("fewshot",)

    def fit(self, ctx):
        self.n = len(ctx.classnames)

    def predict(self, batch):
        return torch.zeros(len(batch.features), len(batch.classnames))
"""


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(PlanError) as info:
        SweepPlan.from_options("coop,nope", "toy-colors,toy-nope", shots="0", seeds=[1, -2], precision="fp8")
    problems = info.value.problems
    assert any("Unknown method 'nope'" in p for p in problems)
    assert any("Unknown dataset or suite 'toy-nope'" in p for p in problems)
    assert any("--shots takes positive integers" in p for p in problems)
    assert any("--seeds takes positive integers" in p for p in problems)
    assert any("Unknown --precision 'fp8'" in p for p in problems)
    assert len(problems) == 5


def test_set_keys_and_types_are_checked_per_method() -> None:
    with pytest.raises(PlanError, match=r"zeroshot has no setting 'n_ctx'.*--set coop.n_ctx=4"):
        fewshot.plan("zeroshot,coop", "toy-colors", sets=["n_ctx=4"])
    with pytest.raises(PlanError, match=r"coop: Bad value 'abc' for epochs \(expected int\)") as info:
        fewshot.plan("coop", "toy", shots=[1, 16], sets={"epochs": "abc"})
    assert len(info.value.problems) == 1  # one line, not one per dataset and shot count
    with pytest.raises(PlanError, match="'kgcoop' is not one of the selected methods"):
        fewshot.plan("coop", "toy-colors", sets=["kgcoop.weight=2"])
    with pytest.raises(PlanError) as together:  # reported with the other problems, not after them
        fewshot.plan("zeroshot,coop", "toy-colors", shots=[0], sets=["coop.epochs=abc", "n_ctx=4"])
    assert len(together.value.problems) == 3
    assert any("coop: Bad value 'abc' for epochs" in p for p in together.value.problems)
    assert any("zeroshot has no setting 'n_ctx'" in p for p in together.value.problems)
    with pytest.raises(PlanError, match=r"--shots takes positive integers .*got '16.5'"):
        fewshot.plan("coop", "toy-colors", shots=16.5)  # type: ignore[arg-type]
    scoped = fewshot.plan("zeroshot,coop", "toy-colors", sets=["coop.n_ctx=4"])
    assert {f.spec.method: f.spec.overrides for f in scoped.fits} == {
        "zeroshot": (),
        "coop": (("n_ctx", "4"),),
    }


def test_configs_are_resolved_per_dataset_and_shots() -> None:
    plan = fewshot.plan("coop,promptsrc", "imagenet,dtd", shots=[1, 16], seeds=[1])
    configs = {(f.spec.method, f.spec.dataset, f.spec.shots): f.config for f in plan.fits}
    assert configs["coop", "imagenet", 16].epochs == 50 and configs["coop", "dtd", 16].epochs == 200
    assert configs["coop", "dtd", 1].epochs == 50
    assert (configs["promptsrc", "dtd", 16].gpa_mean, configs["promptsrc", "dtd", 16].gpa_std) == (45.0, 5.0)
    assert plan.missing().keys() == {"imagenet", "dtd"}  # no data root: planning still works


def test_a_method_refuses_a_protocol_it_does_not_support(tmp_path: Path) -> None:
    plugin = tmp_path / "only_fewshot.py"
    plugin.write_text(PLUGIN)
    target = f"{plugin}:OnlyFewShot"
    assert len(fewshot.plan(target, "toy-colors", seeds=[1])) == 1
    with pytest.raises(PlanError, match="cannot run under --protocol base2novel; it supports fewshot"):
        fewshot.plan(target, "toy-colors", protocol="base2novel")


def test_from_specs_validates_as_from_options() -> None:
    with pytest.raises(PlanError, match="evaluation-only"):
        SweepPlan.from_specs([RunSpec("coop", "imagenet-a")])
    with pytest.raises(PlanError, match="has no setting 'nope'"):
        SweepPlan.from_specs([RunSpec("coop", "toy-colors", overrides=(("nope", "1"),))])
    specs = [RunSpec("coop", "toy-objects", protocol="cross-dataset", target=t) for t in ("", "toy-colors")]
    plan = SweepPlan.from_specs(specs)
    assert len(plan.fits) == 1 and plan.specs == specs


def test_python_api_runs_and_resumes_on_the_toy_world(tmp_path: Path) -> None:
    results = tmp_path / "runs"
    plan = fewshot.plan(methods=["zeroshot"], datasets="toy-colors", shots=[1], seeds=[1, 2])
    first = sweep(plan, results_dir=results, cache_dir=tmp_path / "cache")
    assert [r.ok for r in first] == [True, True] and len(list(results.rglob("*.json"))) == 2
    again = sweep(methods="zeroshot", datasets="toy-colors", shots=[1], seeds=[1, 2], results_dir=results)
    assert [r.metrics for r in again] == [r.metrics for r in first]  # read back, not rerun
    one = run("zeroshot", "toy-colors", shots=1, seed=1, cache_dir=tmp_path / "cache")
    assert one.metrics == first[0].metrics
    with pytest.raises(TypeError, match="one method and one dataset"):
        run("zeroshot", "toy", shots=1)
    with pytest.raises(TypeError, match="a plan or plan options"):
        sweep(plan, shots=[2])


def test_dry_run_counts_the_planned_work_of_each_run() -> None:
    """Images, optimiser steps and text positions, against counts made here from the splits
    and the official schedules (CoOp 16 shots: 200 epochs of batch 32; MaPLe: 5 epochs of
    batch 4, every image through the prompted encoder)."""
    from collections import Counter

    from open_clip.tokenizer import SimpleTokenizer
    from typer.testing import CliRunner

    from fewshot.cli import app
    from fewshot.datasets import get_dataset

    out = CliRunner().invoke(
        app, ["run", "-m", "coop,maple", "-d", "toy-colors", "--seeds", "1", "--dry-run"]
    )
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.strip().startswith("work per run")]
    dataset = get_dataset("toy-colors")
    splits, names = dataset.splits(), dataset.spec().classnames
    train, val = Counter(splits.train.labels), Counter(splits.val.labels)
    support = sum(min(16, n) for n in train.values())
    val_n = sum(min(4, n) for n in val.values())
    tokens = SimpleTokenizer()
    coop_positions = sum(len(tokens.encode(" ".join(["X"] * 16) + f" {n}.")) + 2 for n in names)
    coop_images = support + val_n + 10 * support + len(splits.test)
    assert f"{coop_images:,} images to encode" in lines[0]
    assert f"{200 * (support // 32):,} optimiser steps" in lines[0]
    assert f"{coop_positions:,} text positions per step" in lines[0]
    maple_steps = 5 * (support // 4)
    assert (
        f"{maple_steps:,} optimiser steps" in lines[1] and f"during training {4 * maple_steps:,}" in lines[1]
    )
    assert "Sweep:" in out.output


def test_dry_run_counts_episodes_and_views_of_the_adapters() -> None:
    """SgVA-CLIP's steps are episodes (100 epochs of C // min(50, C) = 1 episode on 12
    classes), and the adapters that read cached views count their encoding."""
    from collections import Counter

    from typer.testing import CliRunner

    from fewshot.cli import app
    from fewshot.datasets import get_dataset

    out = CliRunner().invoke(
        app, ["run", "-m", "sgva-clip,clap,lp++", "-d", "toy-colors", "--seeds", "1", "--dry-run"]
    )
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.strip().startswith("work per run")]
    splits = get_dataset("toy-colors").splits()
    support = sum(min(16, n) for n in Counter(splits.train.labels).values())
    val_n = sum(min(4, n) for n in Counter(splits.val.labels).values())
    with_views = support + val_n + 10 * support + len(splits.test)
    assert "100 optimiser steps" in lines[0] and f"{with_views:,} images to encode" in lines[0]
    assert f"{300 * max(1, support // 256):,} optimiser steps" in lines[1]
    assert f"{with_views:,} images to encode" in lines[1]
