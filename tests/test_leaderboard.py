"""The leaderboard on synthetic records: seed statistics, averages, HM conventions, n/a,
failed runs, version conflicts, published numbers, files and the end-of-sweep summary.

Expected numbers are computed by hand in the comments, not by the code under test.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from fewshot.leaderboard import build_leaderboard, summary_table, to_markdown, write_leaderboard
from fewshot.results import write_record
from fewshot.types import RunResult, RunSpec


def record(root: Path, method: str, dataset: str, seed: int, metrics: dict, **kw: object) -> RunResult:
    status = str(kw.pop("status", "ok"))
    error = kw.pop("error", None)
    prov = {"split_hash": kw.pop("split", "s1"), "dataset_version": "1", "split_source": kw.pop("source", "")}
    if "selected_on_test" in kw:
        prov["selected_on_test"] = kw.pop("selected_on_test")
    spec = RunSpec(method, dataset, seed=seed, **kw)  # type: ignore[arg-type]
    result = RunResult(spec, status, metrics, {"wall_time_s": 1.0}, {}, prov, error)  # type: ignore[arg-type]
    write_record(result, spec.record_path(root))
    return result


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    root = tmp_path / "results" / "runs"
    # few-shot, 16 shots. coop: toy-shapes 70/72/74; toy-colors 60/62 and a failed seed 3.
    for seed, acc in zip((1, 2, 3), (70.0, 72.0, 74.0), strict=True):
        record(root, "coop", "toy-shapes", seed, {"all": acc})
    for seed, acc in zip((1, 2), (60.0, 62.0), strict=True):
        record(root, "coop", "toy-colors", seed, {"all": acc})
    record(root, "coop", "toy-colors", 3, {}, status="failed", error="RuntimeError: out of memory\ntrace")
    # zeroshot: toy-shapes seeds 1-2 on split "aaa", seed 3 on split "bbb" (a conflict).
    for seed, acc, split in ((1, 50.0, "aaa"), (2, 51.0, "aaa"), (3, 90.0, "bbb")):
        record(root, "zeroshot", "toy-shapes", seed, {"all": acc}, split=split)
    record(root, "zeroshot", "toy-colors", 1, {"all": 40.0})
    # base-to-novel: seed means (81, 70.69) and (79.94, 72.69): averages 80.47 / 71.69.
    for dataset, base, novel in (("toy-shapes", 81.0, 70.69), ("toy-colors", 79.94, 72.69)):
        for seed, delta in ((1, -0.5), (2, 0.0), (3, 0.5)):
            coop = {"base": base + delta, "novel": novel - delta}
            record(root, "coop", dataset, seed, coop, protocol="base2novel")
            record(
                root, "linear-probe", dataset, seed, {"base": base - 1, "novel": None}, protocol="base2novel"
            )
    return root


def cell(lb, **where: object) -> pd.DataFrame:
    frame = lb.cells
    for key, value in where.items():
        frame = frame[frame[key] == value]
    return frame


def test_seed_mean_and_ci(runs: Path) -> None:
    lb = build_leaderboard(runs)
    shapes = cell(lb, protocol="fewshot", variant="coop", dataset="toy-shapes").iloc[0]
    # mean 72; population std sqrt((4 + 0 + 4) / 3) = 1.63299; ci95 = 1.96 * 1.63299 / sqrt(3) = 1.84791
    assert shapes["mean"] == pytest.approx(72.0)
    assert shapes["std"] == pytest.approx(1.632993, abs=1e-6)
    assert shapes["ci95"] == pytest.approx(1.847906, abs=1e-6)
    assert shapes["n"] == 3
    colors = cell(lb, protocol="fewshot", variant="coop", dataset="toy-colors").iloc[0]
    # the failed seed is not averaged: mean of 60, 62 = 61; std 1; ci95 = 1.96 / sqrt(2) = 1.38593
    assert (colors["mean"], colors["n"]) == (61.0, 2)
    assert colors["ci95"] == pytest.approx(1.385929, abs=1e-6)
    average = cell(lb, protocol="fewshot", variant="coop", dataset="Average").iloc[0]
    assert average["mean"] == pytest.approx((72.0 + 61.0) / 2) and average["n_datasets"] == 2
    row = lb.fewshot.set_index("Method").loc["coop"]
    assert (row["toy-shapes"], row["Average"], row["Datasets"]) == ("72.00 ± 1.85 (n=3)", "66.50", "2/2")
    columns = ["Backbone", "Precision", "Method", "Shots", "toy-shapes", "toy-colors", "Average", "Datasets"]
    assert list(lb.fewshot.columns) == columns  # datasets in suite order


def test_base_to_novel_hm_conventions(runs: Path) -> None:
    lb = build_leaderboard(runs)
    avg = cell(lb, protocol="base2novel", variant="coop", dataset="Average").set_index("space")["mean"]
    assert avg["base"] == pytest.approx(80.47) and avg["novel"] == pytest.approx(71.69)
    # docs/methods.md#base-to-novel check: HM(80.47, 71.69) = 2 * 80.47 * 71.69 / 152.16 = 75.83
    assert round(avg["hm"], 2) == 75.83
    # The other convention: mean of HM(81, 70.69) = 75.4946 and HM(79.94, 72.69) = 76.1428.
    assert avg["hm_per_dataset_mean"] == pytest.approx((75.494627 + 76.142811) / 2, abs=1e-5)
    per_dataset = cell(lb, protocol="base2novel", variant="coop", dataset="toy-shapes", space="hm").iloc[0]
    assert per_dataset["mean"] == pytest.approx(2 * 81 * 70.69 / (81 + 70.69))
    table = lb.base2novel[lb.base2novel["Method"] == "coop"].set_index("Dataset")
    assert table.loc["Average (2/2 datasets)", "HM"] == "75.83"
    md = to_markdown(lb)
    assert "harmonic mean of the averaged base and averaged novel" in md
    assert "mean of the\n  per-dataset HMs" in md


def test_novel_not_applicable_is_na_never_zero(runs: Path) -> None:
    lb = build_leaderboard(runs)
    novel = cell(lb, protocol="base2novel", variant="linear-probe", space="novel")
    assert len(novel) == 3 and not novel["applicable"].any() and novel["mean"].isna().all()
    rows = lb.base2novel[lb.base2novel["Method"] == "linear-probe"]
    assert set(rows["Novel"]) == {"n/a"} and set(rows["HM"]) == {"n/a"}
    assert rows.iloc[-1]["Base"] == f"{(80.0 + 78.94) / 2:.2f}"
    assert "| linear-probe | 16 | toy-shapes | 80.00 ± 0.00 (n=3) | n/a | n/a |" in to_markdown(lb)


def test_failed_runs_listed_not_averaged(runs: Path) -> None:
    lb = build_leaderboard(runs)
    assert len(lb.failed) == 1
    failed = lb.failed.iloc[0]
    assert (failed["Method"], failed["Dataset"], failed["Seed"]) == ("coop", "toy-colors", 3)
    assert failed["Reason"] == "RuntimeError: out of memory"
    assert failed["Record"].endswith("toy-colors/toy/coop/fewshot-k16-s3.json")
    md = to_markdown(lb)
    assert "## Failed runs" in md and "RuntimeError: out of memory" in md


def test_conflicting_split_hashes_not_averaged(runs: Path) -> None:
    lb = build_leaderboard(runs)
    groups = cell(lb, protocol="fewshot", variant="zeroshot", dataset="toy-shapes").set_index("split_hash")
    assert groups["conflict"].all()
    assert groups.loc["aaa", "mean"] == pytest.approx(50.5) and groups.loc["aaa", "n"] == 2
    assert groups.loc["bbb", "mean"] == pytest.approx(90.0) and groups.loc["bbb", "n"] == 1
    # No average of 50, 51, 90 anywhere, and no dataset Average for the row.
    assert not (lb.cells["mean"].round(4) == round((50 + 51 + 90) / 3, 4)).any()
    assert cell(lb, protocol="fewshot", variant="zeroshot", dataset="Average").empty
    row = lb.fewshot.set_index("Method").loc["zeroshot"]
    assert row["toy-shapes"] == "⚠ 2 versions" and row["Average"] == "—"
    assert sorted(lb.conflicts["Split hash"]) == ["aaa", "bbb"]


def test_incomplete_row_has_no_average(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    record(root, "coop", "toy-shapes", 1, {"all": 70.0})
    record(root, "coop", "toy-colors", 1, {"all": 60.0})
    record(root, "zeroshot", "toy-shapes", 1, {"all": 50.0})
    lb = build_leaderboard(root)
    rows = lb.fewshot.set_index("Method")
    assert rows.loc["zeroshot", "Average"] == "—" and rows.loc["zeroshot", "Datasets"] == "1/2"
    assert rows.loc["zeroshot", "toy-colors"] == "—"
    assert rows.loc["coop", "Average"] == "65.00"


def test_transfer_table(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, (src, a, b) in enumerate([(70.0, 60.0, 50.0), (72.0, 62.0, 52.0)], start=1):
        metrics = {"all": src, "toy-colors": a, "toy-textures": b}
        record(root, "coop", "toy-shapes", seed, metrics, protocol="cross-dataset")
    lb = build_leaderboard(root)
    row = lb.transfer["cross-dataset"].iloc[0]
    # targets: 61 and 51 -> mean 56
    assert row["Mean over targets"] == "56.00" and row["Targets"] == "2/2"
    assert row["Source"].startswith("71.00")
    assert lb.headline.iloc[0]["Value"] == "56.00"


def test_generated_splits_are_marked_up_to_the_average(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    record(root, "coop", "toy-shapes", 1, {"all": 70.0}, source="split_zhou_X.json")
    record(root, "coop", "toy-colors", 1, {"all": 60.0}, source="generated")
    lb = build_leaderboard(root)
    row = lb.fewshot.set_index("Method").loc["coop"]
    assert row["toy-colors"].endswith("†") and not row["toy-shapes"].endswith("†")
    assert row["Average"] == "65.00 †"
    assert "`†`" in to_markdown(lb)
    generated = lb.cells.set_index(["dataset", "space"])["generated"]
    assert bool(generated[("toy-colors", "all")]) and not bool(generated[("toy-shapes", "all")])


def test_selected_on_test_is_marked_up_to_the_average(tmp_path: Path) -> None:
    """``selected_on_test`` in provenance (absent: False) marks the cell and its averages ‡."""
    root = tmp_path / "runs"
    record(root, "coop", "toy-shapes", 1, {"all": 70.0})
    record(root, "coop", "toy-colors", 1, {"all": 60.0}, selected_on_test=True)
    record(root, "coop", "toy-colors", 1, {"base": 60.0, "novel": 50.0}, protocol="base2novel")
    record(root, "coop", "toy-shapes", 1, {"base": 70.0, "novel": 50.0}, protocol="base2novel")
    lb = build_leaderboard(root)
    row = lb.fewshot.set_index("Method").loc["coop"]
    assert row["toy-colors"] == "60.00 (n=1) ‡" and row["toy-shapes"] == "70.00 (n=1)"
    assert row["Average"] == "65.00 ‡"
    assert not lb.base2novel["HM"].str.contains("‡").any()  # no run of base-to-novel set it
    flags = lb.cells.set_index(["protocol", "dataset", "space"])["selected_on_test"]
    assert bool(flags[("fewshot", "toy-colors", "all")]) and not bool(flags[("fewshot", "toy-shapes", "all")])
    assert "`‡`" in to_markdown(lb)


def test_reported_numbers_joined(runs: Path, tmp_path: Path) -> None:
    reported = tmp_path / "results" / "reported"
    reported.mkdir()
    paper = 'paper,"Table 1, arXiv:2109.01134",arXiv:2109.01134,copied'
    (reported / "papers.csv").write_text(
        "method,backbone,protocol,dataset,shots,space,value,source,location,reference,how,primary\n"
        f"coop,toy,fewshot,toy-shapes,16,all,71.5,{paper},yes\n"
        f"coop,toy,fewshot,toy-shapes,16,all,99.0,{paper.replace('Table 1', 'Table 9')},no\n"
        f"coop,toy,base2novel,Average,16,hm,76.33,{paper.replace('Table 1', 'Table 2')},yes\n"
        f"coop,toy,fewshot,toy-objects,16,all,10.0,{paper},yes\n"
    )
    lb = build_leaderboard(runs, reported)
    comparison = lb.comparison.set_index("Space")
    assert len(comparison) == 2  # the primary rows that match a reproduced cell; toy-objects has none
    assert comparison.loc["all", "Published"] == "71.50"
    assert comparison.loc["all", "Δ (reproduced − published)"] == "+0.50"  # 72.00 - 71.50
    assert comparison.loc["hm", "Δ (reproduced − published)"] == "-0.50"  # 75.83 - 76.33
    assert comparison.loc["hm", "Citation"] == "paper: Table 2, arXiv:2109.01134"
    shapes = cell(lb, protocol="fewshot", variant="coop", dataset="toy-shapes").iloc[0]
    assert shapes["reported"] == 71.5 and shapes["reported_diff"] == pytest.approx(0.5)
    assert "## Reproduced vs published" in to_markdown(lb)
    (reported / "bad.csv").write_text("method,accuracy\ncoop,1\n")
    with pytest.raises(Exception, match="missing column"):
        build_leaderboard(runs, reported)


def test_write_leaderboard_is_deterministic(runs: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    paths = write_leaderboard(build_leaderboard(runs), out)
    assert [p.name for p in paths] == ["leaderboard.csv", "LEADERBOARD.md"]
    first = [p.read_bytes() for p in paths]
    write_leaderboard(build_leaderboard(runs), out)
    assert [p.read_bytes() for p in paths] == first
    assert sorted(p.name for p in out.iterdir()) == ["LEADERBOARD.md", "leaderboard.csv"]
    csv = pd.read_csv(paths[0])
    assert {"mean", "ci95", "n", "conflict", "split_hash", "reported"} <= set(csv.columns)
    assert len(csv) == len(build_leaderboard(runs).cells)


def test_empty_results(tmp_path: Path) -> None:
    lb = build_leaderboard(tmp_path / "nothing")
    assert lb.cells.empty and lb.fewshot.empty and lb.failed.empty and lb.n_records == 0
    assert "Failed runs" in to_markdown(lb)


def test_summary_table() -> None:
    results = [
        RunResult(RunSpec("coop", "toy-shapes", seed=1), metrics={"all": 70.0}),
        RunResult(RunSpec("coop", "toy-shapes", seed=2), metrics={"all": 74.0}),
        RunResult(RunSpec("coop", "toy-colors", seed=1), metrics={"all": 60.0}),
        RunResult(RunSpec("coop", "toy-colors", seed=2), status="failed", error="x"),
        RunResult(RunSpec("lp", "toy-shapes", protocol="base2novel"), metrics={"base": 80.0, "novel": None}),
        RunResult(RunSpec("kg", "toy-shapes", protocol="base2novel"), metrics={"base": 80.0, "novel": 70.0}),
    ]
    table = summary_table(results).set_index(["method", "dataset"])
    assert table.loc[("coop", "toy-shapes"), "accuracy"] == 72.0
    assert table.loc[("coop", "toy-colors"), ["accuracy", "runs ok", "runs failed"]].tolist() == [60.0, 1, 1]
    assert table.loc[("coop", "mean (2 datasets)"), ["accuracy", "runs ok", "runs failed"]].tolist() == [
        66.0,
        3,
        1,
    ]
    assert table.loc[("lp", "toy-shapes"), ["novel", "hm"]].isna().all()
    assert table.loc[("kg", "toy-shapes"), "hm"] == pytest.approx(2 * 80 * 70 / 150)


def test_a_record_with_a_nan_metric_is_skipped_not_averaged(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    for seed, acc in ((1, 70.0), (2, 72.0)):
        record(root, "coop", "toy-shapes", seed, {"all": acc})
    damaged = record(root, "coop", "toy-shapes", 3, {"all": 74.0}).spec.record_path(root)
    damaged.write_text(damaged.read_text().replace('"all": 74.0', '"all": NaN'))
    with pytest.warns(UserWarning) as caught:
        lb = build_leaderboard(root)
    assert [str(damaged) in str(w.message) for w in caught] == [True]
    seeds = cell(lb, method="coop", dataset="toy-shapes", space="all", kind="seeds")
    assert (seeds["mean"].tolist(), seeds["n"].tolist()) == ([71.0], [2])  # (70 + 72) / 2, two seeds
    assert lb.n_records == 2


def test_two_precisions_are_never_averaged_together(tmp_path: Path) -> None:
    """fp32 seeds 70/72 and fp16 seed 90: two cells (and two rows), never one of 77.33."""
    root = tmp_path / "runs"
    for seed, acc in ((1, 70.0), (2, 72.0)):
        record(root, "coop", "toy-shapes", seed, {"all": acc})
    record(root, "coop", "toy-shapes", 1, {"all": 90.0}, precision="fp16", device="cuda")
    lb = build_leaderboard(root)
    seeds = cell(lb, method="coop", dataset="toy-shapes", kind="seeds").set_index("precision")
    assert seeds.loc["fp32", "mean"] == 71.0 and seeds.loc["fp16", "mean"] == 90.0
    assert seeds.loc["fp32", "n"] == 2 and seeds.loc["fp16", "n"] == 1
    assert sorted(lb.fewshot["Precision"]) == ["fp16", "fp32"]
    summary = summary_table(
        [
            RunResult(RunSpec("coop", "toy-shapes", precision=p), metrics={"all": a})
            for p, a in (("fp32", 70.0), ("fp16", 90.0))
        ]
    )
    assert sorted(summary["accuracy"]) == [70.0, 90.0]
