"""The display tables of the leaderboard (strings) and :func:`build_leaderboard`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewshot.leaderboard.cells import AVERAGE, VERSION, build_cells, cost_cells, join_reported, ordered
from fewshot.reported import REPORTED_COLUMNS, read_reported
from fewshot.results import load_records
from fewshot.types import PROTOCOLS

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["GENERATED", "MISSING", "NA", "SELECTED_ON_TEST", "Leaderboard", "build_leaderboard", "marks"]

NA, MISSING = "n/a", "—"
GENERATED = "†"  # marks results on a split fewshot generated (no official split file)
SELECTED_ON_TEST = "‡"  # marks results of runs that selected anything on the test split


@dataclass
class Leaderboard:
    """Every table of the leaderboard; ``cells`` is the numeric source of all the others.

    ``cells``: one row per (KEY, space, version group) with mean/std/ci95/n over seeds
    (``kind`` "seeds"), per-dataset HM rows (``kind`` "hm") and averages (``kind``
    "average", dataset "Average" or space "mean"), plus ``reported``, ``reported_diff``
    and ``citation`` where a published number matches. The other frames hold display
    strings: ``fewshot`` and ``base2novel`` wide tables, ``transfer`` one table per other
    protocol, ``headline`` one number per method row, ``failed`` and ``conflicts`` lists,
    ``comparison`` reproduced against published numbers. ``costs``: per method row, the
    mean fit time and trainable parameters of its runs (``cells.cost_cells``).
    """

    cells: pd.DataFrame
    fewshot: pd.DataFrame
    base2novel: pd.DataFrame
    transfer: dict[str, pd.DataFrame]
    headline: pd.DataFrame
    failed: pd.DataFrame
    conflicts: pd.DataFrame
    comparison: pd.DataFrame
    costs: pd.DataFrame
    n_records: int = 0
    source: str = ""


# ------------------------------------------------------------------------------------------
# Display tables (strings)


def marks(row: Any) -> str:
    """`` †`` / `` ‡`` / `` † ‡``: the marks of a cell row (generated split, selected on test)."""
    found = [m for flag, m in (("generated", GENERATED), ("selected_on_test", SELECTED_ON_TEST)) if row[flag]]
    return "".join(f" {m}" for m in found)


def _cell_text(sub: pd.DataFrame) -> str:
    """One wide-table cell: "mean ± ci95 (n=seeds)" ("mean (n=1)" for one seed: no interval),
    "n/a", "—", or the conflict mark."""
    if sub.empty:
        return MISSING
    if len(sub) > 1:
        return f"⚠ {len(sub)} versions"
    row = sub.iloc[0]
    if not row["applicable"]:
        return NA
    mark = marks(row)
    if row["kind"] != "seeds":
        return f"{row['mean']:.2f}{mark}"
    if int(row["n"]) == 1:
        return f"{row['mean']:.2f} (n=1){mark}"
    return f"{row['mean']:.2f} ± {row['ci95']:.2f} (n={int(row['n'])}){mark}"


def _pick(group: pd.DataFrame, dataset: str, space: str) -> pd.DataFrame:
    return group[(group["dataset"] == dataset) & (group["space"] == space)]


def _fewshot_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Rows (backbone, method, shots) x dataset columns, with the Average over datasets."""
    import pandas as pd

    table = cells[(cells["protocol"] == "fewshot") & (cells["space"] == "all")]
    rows = []
    for backbone, bb in table.groupby("backbone", sort=True):
        datasets = ordered(bb.loc[bb["dataset"] != AVERAGE, "dataset"].tolist())
        for (precision, variant, shots), group in bb.groupby(["precision", "variant", "shots"], sort=True):
            row = {"Backbone": backbone, "Precision": precision, "Method": variant, "Shots": int(shots)}
            row.update({d: _cell_text(_pick(group, d, "all")) for d in datasets})
            have = sum(not _pick(group, d, "all").empty for d in datasets)
            row["Average"] = _cell_text(_pick(group, AVERAGE, "all"))
            row["Datasets"] = f"{have}/{len(datasets)}"
            rows.append(row)
    columns = [
        "Backbone",
        "Precision",
        "Method",
        "Shots",
        *ordered(table["dataset"][table["dataset"] != AVERAGE].tolist()),
        "Average",
        "Datasets",
    ]
    return pd.DataFrame(rows, columns=columns)


def _b2n_rows(group: pd.DataFrame, datasets: list[str]) -> list[dict[str, Any]]:
    """Per-dataset rows (one per version group) and the Average row of one method."""
    rows = []
    per_dataset = group[group["dataset"] != AVERAGE]
    # sort=False keeps the suite order of the (sorted) cells.
    for (dataset, *version), sub in per_dataset.groupby(["dataset", *VERSION], sort=False):
        spaces = {space: s for space, s in sub.groupby("space")}
        mark = " ⚠ " + "/".join(v or "?" for v in version) if sub["conflict"].any() else ""
        empty = sub.iloc[0:0]
        rows.append(
            {
                "Dataset": f"{dataset}{mark}",
                "Base": _cell_text(spaces.get("base", empty)),
                "Novel": _cell_text(spaces.get("novel", empty)),
                "HM": _cell_text(spaces.get("hm", empty)),
                "HM (mean of dataset HMs)": "",
                "Seeds": str(int(sub["n"].max())),
            }
        )
    have = per_dataset["dataset"].nunique()
    label = f"Average ({have}/{len(datasets)} datasets)"
    avg = {space: _pick(group, AVERAGE, space) for space in ("base", "novel", "hm", "hm_per_dataset_mean")}
    rows.append(
        {
            "Dataset": label,
            "Base": _cell_text(avg["base"]),
            "Novel": _cell_text(avg["novel"]),
            "HM": _cell_text(avg["hm"]),
            "HM (mean of dataset HMs)": _cell_text(avg["hm_per_dataset_mean"]),
            "Seeds": "",
        }
    )
    return rows


def _b2n_table(cells: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    table = cells[cells["protocol"] == "base2novel"]
    rows = []
    for backbone, bb in table.groupby("backbone", sort=True):
        datasets = ordered(bb.loc[bb["dataset"] != AVERAGE, "dataset"].tolist())
        for (precision, variant, shots), group in bb.groupby(["precision", "variant", "shots"], sort=True):
            for row in _b2n_rows(group, datasets):
                ident = {"Backbone": backbone, "Precision": precision, "Method": variant, "Shots": int(shots)}
                rows.append({**ident, **row})
    columns = [
        "Backbone",
        "Precision",
        "Method",
        "Shots",
        "Dataset",
        "Base",
        "Novel",
        "HM",
        "HM (mean of dataset HMs)",
        "Seeds",
    ]
    return pd.DataFrame(rows, columns=columns)


def _transfer_table(cells: pd.DataFrame, protocol: str) -> pd.DataFrame:
    """Rows (backbone, method, shots, source) x target columns, with the mean over targets."""
    import pandas as pd

    table = cells[cells["protocol"] == protocol]
    targets_all = ordered(table.loc[~table["space"].isin(["all", "mean"]), "space"].tolist())
    rows = []
    for backbone, bb in table.groupby("backbone", sort=True):
        targets = ordered(bb.loc[~bb["space"].isin(["all", "mean"]), "space"].tolist())
        keys = ["precision", "variant", "shots", "dataset"]
        for (precision, variant, shots, source), group in bb.groupby(keys, sort=True):
            row = {
                "Backbone": backbone,
                "Precision": precision,
                "Method": variant,
                "Shots": int(shots),
                "Trained on": source,
                "Source": _cell_text(_pick(group, source, "all")),
            }
            row.update({t: _cell_text(_pick(group, source, t)) for t in targets})
            have = sum(not _pick(group, source, t).empty for t in targets)
            row["Mean over targets"] = _cell_text(_pick(group, source, "mean"))
            row["Targets"] = f"{have}/{len(targets)}"
            rows.append(row)
    columns = [
        "Backbone",
        "Precision",
        "Method",
        "Shots",
        "Trained on",
        "Source",
        *targets_all,
        "Mean over targets",
        "Targets",
    ]
    return pd.DataFrame(rows, columns=columns)


def _headline(fewshot: pd.DataFrame, b2n: pd.DataFrame, transfer: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One number per method row: few-shot Average, base-to-novel average HM, mean over targets."""
    import pandas as pd

    ident = ["Backbone", "Precision", "Method", "Shots"]
    parts = [
        fewshot[ident].assign(
            Protocol="fewshot",
            Metric="Average accuracy",
            Value=fewshot["Average"],
            Coverage=fewshot["Datasets"],
        )
    ]
    averages = b2n[b2n["Dataset"].str.startswith("Average")]
    parts.append(
        averages[ident].assign(
            Protocol="base2novel",
            Metric="HM of averages",
            Value=averages["HM"],
            Coverage=averages["Dataset"].str.extract(r"\((.*)\)")[0],
        )
    )
    for protocol, table in transfer.items():
        parts.append(
            table[ident].assign(
                Protocol=protocol,
                Metric="Mean over targets from " + table["Trained on"],
                Value=table["Mean over targets"],
                Coverage=table["Targets"],
            )
        )
    columns = ["Protocol", *ident, "Metric", "Value", "Coverage"]
    return pd.concat([p[columns] for p in parts], ignore_index=True)


def _display(frame: pd.DataFrame, names: dict[str, str]) -> pd.DataFrame:
    """Select and rename columns of a cells/records frame for display."""
    return frame[list(names)].rename(columns=names).reset_index(drop=True)


def _failed_table(records: pd.DataFrame) -> pd.DataFrame:
    failed = records[records["status"] != "ok"].drop_duplicates("spec_hash")
    names = {
        "variant": "Method",
        "dataset": "Dataset",
        "target": "Target",
        "backbone": "Backbone",
        "precision": "Precision",
        "protocol": "Protocol",
        "shots": "Shots",
        "seed": "Seed",
        "error": "Reason",
        "path": "Record",
    }
    table = _display(failed.fillna({"error": "failed", "path": ""}), names)
    # The first line of the error is the reason; the record holds the traceback.
    table["Reason"] = [str(e).strip().split("\n")[0][:200] for e in table["Reason"]]
    return table.sort_values(list(names.values()), kind="mergesort").reset_index(drop=True)


def _conflict_table(cells: pd.DataFrame) -> pd.DataFrame:
    conflicted = cells[cells["conflict"] & (cells["kind"] != "average")]
    names = {
        "protocol": "Protocol",
        "backbone": "Backbone",
        "precision": "Precision",
        "variant": "Method",
        "shots": "Shots",
        "dataset": "Dataset",
        "space": "Space",
        "dataset_version": "Dataset version",
        "split_hash": "Split hash",
        "method_version": "Method version",
        "code_digest": "Code digest",
        "knowledge": "Description sets",
    }
    table = _display(conflicted.replace({c: {"": "?"} for c in VERSION}), names)
    table["Accuracy"] = [_cell_text(conflicted.loc[[i]]) for i in conflicted.index]
    return table


def _comparison_table(cells: pd.DataFrame) -> pd.DataFrame:
    matched = cells[cells["reported"].notna()]
    names = {
        "protocol": "Protocol",
        "backbone": "Backbone",
        "precision": "Precision",
        "variant": "Method",
        "dataset": "Dataset",
        "shots": "Shots",
        "space": "Space",
    }
    table = _display(matched, names)
    table["Reproduced"] = [_cell_text(matched.loc[[i]]) for i in matched.index]
    table["Published"] = [f"{v:.2f}" for v in matched["reported"]]
    table["Δ (reproduced − published)"] = [
        f"{d:+.2f}" if ok else NA
        for d, ok in zip(matched["reported_diff"], matched["applicable"], strict=True)
    ]
    table["Citation"] = matched["citation"].tolist()
    return table


def build_leaderboard(results_dir: Path, reported_dir: Path | None = None) -> Leaderboard:
    """Aggregate every record under ``results_dir`` (and published numbers) into tables.

    ``reported_dir``: a folder of CSV files of published numbers (``results/reported``),
    or None for none. Pure: reads files, writes nothing.
    """

    records = load_records(results_dir)
    reported = read_reported(reported_dir) if reported_dir is not None else _no_reported()
    cells = join_reported(build_cells(records), reported)
    fewshot, b2n = _fewshot_table(cells), _b2n_table(cells)
    transfer = {p: _transfer_table(cells, p) for p in PROTOCOLS[2:] if (cells["protocol"] == p).any()}
    return Leaderboard(
        cells=cells,
        fewshot=fewshot,
        base2novel=b2n,
        transfer=transfer,
        headline=_headline(fewshot, b2n, transfer),
        failed=_failed_table(records),
        conflicts=_conflict_table(cells),
        comparison=_comparison_table(cells),
        costs=cost_cells(records),
        n_records=int(records["spec_hash"].nunique()),
        source=str(results_dir),
    )


def _no_reported() -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(columns=[*REPORTED_COLUMNS, "accuracy", "citation"])
