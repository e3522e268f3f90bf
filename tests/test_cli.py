"""The CLI through typer's CliRunner: validation before any run, the RunSpecs it builds
(with ``fewshot.sweeps.sweep`` patched), list, leaderboard and cache commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import pytest
from typer.testing import CliRunner

import fewshot
import fewshot.sweeps
from fewshot.cli import app
from fewshot.planning import SweepPlan
from fewshot.results import write_record
from fewshot.types import RunResult, RunSpec

runner = CliRunner()


@pytest.fixture
def sweep_calls(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> list[dict[str, Any]]:
    """Patch the sweep the CLI calls; record its arguments; return ok results."""
    calls: list[dict[str, Any]] = []

    def fake_sweep(plan: SweepPlan, **kwargs: Any) -> list[RunResult]:
        calls.append({"specs": plan.specs, "data_root": plan.data_root, "plan": plan, **kwargs})
        return [RunResult(s, metrics={"all": 50.0 + s.seed}) for s in plan.specs]

    monkeypatch.setattr(fewshot.sweeps, "sweep", fake_sweep)
    monkeypatch.delenv("FEWSHOT_DATA", raising=False)
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    return calls


def expected_device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def expected_precision() -> str:
    return "fp16" if expected_device() == "cuda" else "fp32"  # --precision auto


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip()]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "coopp", "-d", "toy-shapes"], "Unknown method 'coopp'. Did you mean coop"),
        (["-m", "coop", "-d", "toy-shapes", "--shots", "0"], "--shots takes positive integers"),
        (["-m", "coop", "-d", "toy-shape"], "Unknown dataset or suite 'toy-shape'. Did you mean toy-shapes"),
        (["-m", "coop", "-d", "toy-shapes", "--backbone", "ViT-B-16"], "Bad backbone id 'ViT-B-16'"),
        (["-m", "coop", "-d", "toy-shapes", "--set", "lr"], "Bad --set 'lr': write key=value"),
        (
            ["-m", "coop", "-d", "toy-shapes", "--set", "n_ctxx=4"],
            "has no setting 'n_ctxx'. Did you mean n_ctx?",
        ),
        (["-m", "coop", "-d", "toy-shapes", "--protocol", "b2n"], "Unknown protocol 'b2n'"),
        (["-m", "coop", "-d", "toy-shapes", "--aug-views", "many"], "--aug-views takes an integer"),
    ],
)
def test_run_rejects_bad_input_before_running(
    sweep_calls: list, tmp_path: Path, args: list[str], message: str
) -> None:
    results = tmp_path / "runs"
    out = runner.invoke(app, ["run", *args, "--results", str(results)])
    assert out.exit_code == 2
    lines = error_lines(out.output)
    assert len(lines) == 1, out.output
    assert lines[0].startswith("Error: ") and message in lines[0]
    assert "Traceback" not in out.output
    assert sweep_calls == [] and not results.exists() and not (tmp_path / "cache").exists()


def test_run_reports_every_problem_at_once(sweep_calls: list, tmp_path: Path) -> None:
    out = runner.invoke(app, ["run", "-m", "nope", "-d", "toy-shapes", "--shots", "0", "--seeds", "x"])
    assert out.exit_code == 2
    assert len(error_lines(out.output)) == 3 and sweep_calls == []


def test_run_builds_the_grid(sweep_calls: list, tmp_path: Path) -> None:
    results = tmp_path / "runs"
    out = runner.invoke(
        app, f"run -m coop --shots 1,16 --seeds 1,2 -d toy-shapes --results {results}".split()
    )
    assert out.exit_code == 0, out.output
    (call,) = sweep_calls
    on = {"backbone": "toy", "device": expected_device(), "precision": expected_precision()}
    assert call["specs"] == [
        RunSpec("coop", "toy-shapes", shots=1, seed=1, **on),
        RunSpec("coop", "toy-shapes", shots=1, seed=2, **on),
        RunSpec("coop", "toy-shapes", shots=16, seed=1, **on),
        RunSpec("coop", "toy-shapes", shots=16, seed=2, **on),
    ]
    # The plan carries each run's resolved config: CoOp's epochs per shot count.
    assert [fit.config.epochs for fit in call["plan"].fits] == [50, 50, 200, 200]
    assert call["results_dir"] == results and call["data_root"] is None
    assert Path(call["cache"].root) == tmp_path / "cache"
    assert call["console"] is not None
    assert "No dataset given" not in out.output
    assert "toy-shapes" in out.output and "Summary" in out.output  # the summary table


def test_run_defaults_to_toy_suite_with_one_notice(sweep_calls: list, tmp_path: Path) -> None:
    out = runner.invoke(app, ["run", "--results", str(tmp_path / "runs")])
    assert out.exit_code == 0, out.output
    specs = sweep_calls[0]["specs"]
    toy = ["toy-shapes", "toy-colors", "toy-textures", "toy-objects"]
    assert [s.dataset for s in specs[:12:3]] == toy  # method-major, then dataset, then seeds
    assert {s.method for s in specs} == {"zeroshot", "linear-probe", "coop"}
    assert len(specs) == 3 * 4 * 1 * 3
    # Zero-shot reads no support images: planned once per (dataset, seed), at 0 shots.
    assert {(s.method, s.shots) for s in specs} == {("zeroshot", 0), ("linear-probe", 16), ("coop", 16)}
    assert {(s.backbone, s.protocol, s.aug_views) for s in specs} == {("toy", "fewshot", 10)}
    assert sorted({s.seed for s in specs}) == [1, 2, 3]
    notices = [line for line in out.output.splitlines() if "No dataset given" in line]
    assert len(notices) == 1
    assert "toy suite" in notices[0] and "--suite coop11 --backbone ViT-B-16:openai --data-root" in notices[0]


def test_run_options_reach_the_specs(sweep_calls: list, tmp_path: Path) -> None:
    args = (
        "run -m coop,zeroshot -m linear-probe --suite toy-shift --seeds 3 --set coop.n_ctx=4 --device cpu "
        f"--aug-views online --protocol base2novel --backbone ViT-B-16:openai --data-root {tmp_path}"
    )
    out = runner.invoke(app, args.split())
    assert out.exit_code == 0, out.output
    specs = {s.method: s for s in sweep_calls[0]["specs"]}
    assert list(specs) == ["coop", "zeroshot", "linear-probe"]
    assert specs["coop"].overrides == (("n_ctx", "4"),) and specs["zeroshot"].overrides == ()
    assert specs["coop"].variant == "coop[n_ctx=4,aug_views=online]"
    assert {(s.aug_views, s.device, s.dataset) for s in specs.values()} == {(0, "cpu", "toy-shapes-sketch")}
    assert all(s.backbone == "ViT-B-16:openai" and s.protocol == "base2novel" for s in specs.values())
    assert sweep_calls[0]["data_root"] == tmp_path


def dry_run_blocks(output: str) -> dict[str, str]:
    """``--dry-run`` output: dataset name -> the config line under its block."""
    blocks, lines = {}, output.splitlines()
    for i, line in enumerate(lines):
        if " · " in line and "shots" in line:
            dataset = line.split(" · ")[1].split(" ")[0]
            blocks[dataset] = lines[i + 1]
    return blocks


def test_dry_run_shows_each_datasets_resolved_config_without_data(
    sweep_calls: list, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No data on the machine: the plan still resolves every config (CoOp: 50 ImageNet
    epochs at every shot count, 200 elsewhere at 16 shots), marks the data missing, runs
    nothing and loads no backbone."""
    import fewshot.backbones

    monkeypatch.setattr(fewshot.backbones, "load_backbone", lambda *a, **k: pytest.fail("weights loaded"))
    out = runner.invoke(
        app,
        ["run", "--method", "coop", "--suite", "coop11", "--shots", "16", "--dry-run"],
        terminal_width=200,
    )
    assert out.exit_code == 0, out.output
    blocks = dry_run_blocks(out.output)
    assert len(blocks) == 11
    assert "epochs=50 " in blocks["imagenet"] and "epochs=200 " in blocks["caltech101"]
    assert "data missing: imagenet" in out.output and "Nothing was run" in out.output
    assert sweep_calls == [] and not (tmp_path / "cache").exists()


def test_dry_run_shows_promptsrc_gpa_per_dataset(sweep_calls: list) -> None:
    b2n = runner.invoke(
        app, ["run", "-m", "promptsrc", "--protocol", "base2novel", "--suite", "coop11", "--dry-run"]
    )
    assert b2n.exit_code == 0, b2n.output
    blocks = dry_run_blocks(b2n.output)
    assert len(blocks) == 11 and all("gpa_mean=15.0 gpa_std=1.0" in b for b in blocks.values())
    few = runner.invoke(app, ["run", "-m", "promptsrc", "--suite", "coop11", "--shots", "4", "--dry-run"])
    blocks = dry_run_blocks(few.output)
    assert "gpa_mean=45.0 gpa_std=5.0" in blocks["dtd"] and "gpa_mean=30.0 gpa_std=30.0" in blocks["imagenet"]
    assert sweep_calls == []


def test_set_key_some_methods_lack_is_rejected_naming_them(sweep_calls: list, tmp_path: Path) -> None:
    results = tmp_path / "runs"
    out = runner.invoke(
        app,
        [
            "run",
            "--method",
            "zeroshot,coop",
            "--set",
            "n_ctx=4",
            "-d",
            "toy-shapes",
            "--results",
            str(results),
        ],
    )
    assert out.exit_code == 2
    (line,) = error_lines(out.output)
    assert "zeroshot has no setting 'n_ctx'" in line and "--set coop.n_ctx=4" in line
    assert sweep_calls == [] and not results.exists()


def test_set_value_of_the_wrong_type_is_rejected_naming_the_type(sweep_calls: list, tmp_path: Path) -> None:
    results = tmp_path / "runs"
    out = runner.invoke(
        app, ["run", "-m", "coop", "--set", "epochs=abc", "-d", "toy-shapes", "--results", str(results)]
    )
    assert out.exit_code == 2
    (line,) = error_lines(out.output)
    assert "Bad value 'abc' for epochs (expected int)" in line
    assert sweep_calls == [] and not results.exists()


def test_seeds_must_be_positive_and_eval_only_datasets_are_no_source(sweep_calls: list) -> None:
    out = runner.invoke(app, ["run", "-m", "coop", "-d", "toy-shapes", "--seeds", "0"])
    assert out.exit_code == 2 and "--seeds takes positive integers" in out.output
    shifted = runner.invoke(app, ["run", "-m", "coop", "-d", "imagenet-a", "--dry-run"])
    assert shifted.exit_code == 2 and "evaluation-only" in shifted.output
    assert sweep_calls == []


def test_run_with_data_root_needs_a_dataset(sweep_calls: list, tmp_path: Path) -> None:
    out = runner.invoke(app, ["run", "-m", "coop", "--data-root", str(tmp_path)])
    assert out.exit_code == 2 and "No dataset given" in out.output and sweep_calls == []


def test_run_exits_1_when_runs_fail(
    monkeypatch: pytest.MonkeyPatch, sweep_calls: list, tmp_path: Path
) -> None:
    def failing(plan: SweepPlan, **kwargs: Any) -> list[RunResult]:
        specs = plan.specs
        return [RunResult(s, status="failed", error="boom [/tmp/x]") for s in specs[:1]] + [
            RunResult(s, metrics={"all": 1.0}) for s in specs[1:]
        ]

    monkeypatch.setattr(fewshot.sweeps, "sweep", failing)
    results = tmp_path / "runs"
    out = runner.invoke(app, ["run", "-m", "coop", "-d", "toy-shapes", "--results", str(results)])
    assert out.exit_code == 1
    assert "1 of 3 runs failed" in out.output and str(results) in out.output


def test_fewshot_errors_become_one_red_line(monkeypatch: pytest.MonkeyPatch, sweep_calls: list) -> None:
    def raising(plan: SweepPlan, **kwargs: Any) -> list[RunResult]:
        raise fewshot.types.FewshotError("Datasets missing: put them there.")

    monkeypatch.setattr(fewshot.sweeps, "sweep", raising)
    out = runner.invoke(app, ["run", "-m", "coop", "-d", "toy-shapes"])
    assert out.exit_code == 2 and error_lines(out.output) == ["Error: Datasets missing: put them there."]


def test_version_and_help() -> None:
    assert runner.invoke(app, ["--version"]).output.strip() == f"fewshot {fewshot.__version__}"
    out = runner.invoke(app, ["-h"])
    assert out.exit_code == 0 and "leaderboard" in out.output and "run" in out.output


def test_list_commands() -> None:
    methods = runner.invoke(app, ["list", "methods"])
    assert methods.exit_code == 0
    for name in ("coop", "linear-probe", "zeroshot"):
        assert name in methods.output
    assert "builtin" in methods.output
    suites = runner.invoke(app, ["list", "suites"])
    assert "toy-shapes, toy-colors, toy-textures, toy-objects" in suites.output
    datasets = runner.invoke(app, ["list", "datasets"])
    assert datasets.exit_code == 0 and "toy-shapes-sketch" in datasets.output and "present" in datasets.output


def test_list_backbones(monkeypatch: pytest.MonkeyPatch) -> None:
    import fewshot.backbones

    monkeypatch.setattr(fewshot.backbones, "list_backbones", lambda: ["toy", "ViT-B-16:openai"])
    out = runner.invoke(app, ["list", "backbones"])
    assert out.exit_code == 0 and out.output.split() == ["toy", "ViT-B-16:openai"]


def test_leaderboard_command(tmp_path: Path) -> None:
    runs = tmp_path / "results" / "runs"
    for seed, acc in ((1, 70.0), (2, 74.0)):
        spec = RunSpec("coop", "toy-shapes", seed=seed)
        write_record(RunResult(spec, metrics={"all": acc}), spec.record_path(runs))
    out = runner.invoke(app, ["leaderboard", "--results", str(runs)])
    assert out.exit_code == 0, out.output
    md = runs / "LEADERBOARD.md"  # in the results folder read: two folders never collide
    assert md.is_file() and (runs / "leaderboard.csv").is_file()
    assert str(md) in out.output.replace("\n", "")
    assert "72.00" in md.read_text() and "72.00" in out.output  # the short table
    missing = runner.invoke(app, ["leaderboard", "--results", str(tmp_path / "nope")])
    assert missing.exit_code == 2 and "No results folder" in missing.output


class FakeCache:
    cleared: ClassVar[list[tuple[str | None, str | None]]] = []

    def __init__(self, root: Path | None = None) -> None:
        self.root = root

    def ls(self) -> list[dict[str, Any]]:
        return [
            {"backbone": "toy", "dataset": "toy-shapes", "n": 10, "dim": 64, "view": None, "size": 2048},
            {"backbone": "toy", "dataset": "toy-colors", "n": 5, "dim": 64, "view": 3, "size": 1024},
        ]

    def clear(self, backbone: str | None = None, dataset: str | None = None) -> int:
        FakeCache.cleared.append((backbone, dataset))
        return 1


def test_cache_commands(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import fewshot.features

    monkeypatch.setattr(fewshot.features, "FeatureCache", FakeCache)
    FakeCache.cleared = []
    listing = runner.invoke(app, ["cache", "ls", "--cache-dir", str(tmp_path), "--dataset", "toy-shapes"])
    assert listing.exit_code == 0 and "toy-shapes" in listing.output and "toy-colors" not in listing.output
    assert "1 entries, 2 KB" in listing.output
    refused = runner.invoke(app, ["cache", "clear", "--dataset", "toy-colors"], input="n\n")
    assert refused.exit_code != 0 and FakeCache.cleared == []
    done = runner.invoke(app, ["cache", "clear", "--dataset", "toy-colors", "--yes"])
    assert done.exit_code == 0 and FakeCache.cleared == [(None, "toy-colors")] and "Removed 1" in done.output


@pytest.mark.parametrize(
    ("flags", "rerun"), [([], "stale"), (["--force"], "all"), (["--no-rerun-stale"], "none")]
)
def test_rerun_flags_reach_the_sweep(sweep_calls: list, tmp_path: Path, flags: list[str], rerun: str) -> None:
    out = runner.invoke(
        app, ["run", "-m", "zeroshot", "-d", "toy-colors", "--results", str(tmp_path), *flags]
    )
    assert out.exit_code == 0, out.output
    assert [call["rerun"] for call in sweep_calls] == [rerun]
