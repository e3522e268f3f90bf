"""The leaderboard: a pure function from result records to tables, CSV and Markdown.

``build_leaderboard(results_dir)`` reads every record (``fewshot.results.load_records``) and
aggregates seeds into cells; ``write_leaderboard(lb, out_dir)`` writes ``leaderboard.csv``
(the long, numeric form: one row per cell) and ``LEADERBOARD.md`` (views of it). Nothing
here trains or reads logs; the same records always give byte-identical files.

Conventions (METHODS.md §1.2-1.3):

- a cell is (protocol, backbone, method variant, shots, dataset, label space); its seeds
  aggregate to mean, population std and 95% CI = 1.96·std/√n (fewshot.metrics.aggregate);
- the few-shot "Average" is the unweighted mean of per-dataset means, given only where the
  method has every dataset of its table;
- base-to-novel HM per dataset is the HM of the seed means; the "Average" row's HM is the
  HM of the averaged base and averaged novel accuracies (the mean of per-dataset HMs is
  kept beside it, as the other convention found in papers);
- cross-dataset and domain-generalization spaces are target datasets; "mean" is the mean
  over every target of the table;
- a space the method cannot classify (novel classes for a linear probe) is "n/a", never 0;
- failed runs are listed, never averaged; runs whose dataset version, split hash or method
  version differ are never averaged together: each version group is its own cell, marked
  as a conflict, and a conflicted cell blocks the averages that would need it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewshot._io import atomic_write_text
from fewshot.metrics import aggregate, harmonic_mean
from fewshot.results import load_records, records_frame
from fewshot.types import PROTOCOLS, BackboneSpec, ConfigError, RunResult

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CELL_COLUMNS",
    "REPORTED_COLUMNS",
    "Leaderboard",
    "build_leaderboard",
    "read_reported",
    "summary_table",
    "to_markdown",
    "write_leaderboard",
]

KEY = ["protocol", "backbone", "method", "variant", "shots", "dataset"]
VERSION = ["dataset_version", "split_hash", "method_version"]
ROW = ["protocol", "backbone", "method", "variant", "shots"]  # a row of a wide table
CELL_COLUMNS = [
    *KEY,
    "space",
    "kind",
    "mean",
    "std",
    "ci95",
    "n",
    "n_datasets",
    "applicable",
    "conflict",
    "generated",
    *VERSION,
]
REPORTED_COLUMNS = ["method", "backbone", "dataset", "protocol", "shots", "space", "accuracy", "citation"]
AVERAGE = "Average"  # the dataset name of average rows
SPACE_ORDER = ["all", "base", "novel", "hm", "hm_per_dataset_mean"]  # then targets, then "mean"
NA, MISSING = "n/a", "—"
GENERATED = "†"  # marks results on a split fewshot generated (no official split file)


@dataclass
class Leaderboard:
    """Every table of the leaderboard; ``cells`` is the numeric source of all the others.

    ``cells``: one row per (KEY, space, version group) with mean/std/ci95/n over seeds
    (``kind`` "seeds"), per-dataset HM rows (``kind`` "hm") and averages (``kind``
    "average", dataset "Average" or space "mean"), plus ``reported``, ``reported_diff``
    and ``citation`` where a published number matches. The other frames hold display
    strings: ``fewshot`` and ``base2novel`` wide tables, ``transfer`` one table per other
    protocol, ``headline`` one number per method row, ``failed`` and ``conflicts`` lists,
    ``comparison`` reproduced against published numbers.
    """

    cells: pd.DataFrame
    fewshot: pd.DataFrame
    base2novel: pd.DataFrame
    transfer: dict[str, pd.DataFrame]
    headline: pd.DataFrame
    failed: pd.DataFrame
    conflicts: pd.DataFrame
    comparison: pd.DataFrame
    n_records: int = 0
    source: str = ""


# ------------------------------------------------------------------------------------------
# Ordering


def _dataset_rank() -> dict[str, int]:
    """Datasets in suite order (as papers print them), so tables read in the usual order."""
    from fewshot.datasets import SUITES

    ranks: dict[str, int] = {}
    for members in SUITES.values():
        for name in members:
            ranks.setdefault(name, len(ranks))
    return ranks


def _sort(frame: pd.DataFrame) -> pd.DataFrame:
    """Deterministic order: protocol, backbone, variant, shots, dataset, space, versions."""
    if frame.empty:
        return frame.reset_index(drop=True)
    ranks = _dataset_rank()
    proto = {p: i for i, p in enumerate(PROTOCOLS)}
    space = {s: i for i, s in enumerate(SPACE_ORDER)}
    keyed = frame.assign(
        _p=frame["protocol"].map(lambda p: proto.get(p, len(proto))),
        _d=frame["dataset"].map(lambda d: (d == AVERAGE, ranks.get(d, len(ranks)), d)),
        _s=frame["space"].map(lambda s: (s == "mean", space.get(s, len(space)), s)),
    )
    by = ["_p", "backbone", "variant", "shots", "_d", "_s", *[c for c in VERSION if c in frame]]
    return keyed.sort_values(by, kind="mergesort").drop(columns=["_p", "_d", "_s"]).reset_index(drop=True)


def _ordered(names: Sequence[str]) -> list[str]:
    ranks = _dataset_rank()
    return sorted(set(names), key=lambda d: (ranks.get(d, len(ranks)), d))


# ------------------------------------------------------------------------------------------
# Cells


def _cell(keys: dict[str, Any], space: str, kind: str, mean: float, **extra: Any) -> dict[str, Any]:
    """A row of ``cells``; statistics that do not apply to ``kind`` are NaN."""
    row = {
        **keys,
        "space": space,
        "kind": kind,
        "mean": mean,
        "std": math.nan,
        "ci95": math.nan,
        "n": math.nan,
        "n_datasets": math.nan,
        "applicable": not math.isnan(mean),
        "conflict": False,
        "generated": False,
    }
    row.update(extra)
    return row


def _seed_cells(ok: pd.DataFrame) -> list[dict[str, Any]]:
    """Aggregate seeds per (KEY, version group, space)."""
    rows = []
    for keys, group in ok.groupby([*KEY, *VERSION, "space"], sort=True):
        *key, space = keys
        values = group.loc[group["applicable"], "accuracy"].tolist()
        stats = aggregate(values) if values else {"mean": math.nan, "std": math.nan, "ci95": math.nan}
        key_cols = dict(zip([*KEY, *VERSION], key, strict=True))
        rows.append(
            _cell(
                key_cols,
                space,
                "seeds",
                stats["mean"],
                std=stats["std"],
                ci95=stats["ci95"],
                n=len(values),
                generated=bool(group["generated_split"].any()),
            )
        )
    return rows


def _hm_cells(seeds: pd.DataFrame) -> list[dict[str, Any]]:
    """Per-dataset base-to-novel HM, from the seed means of base and novel."""
    rows = []
    b2n = seeds[seeds["protocol"] == "base2novel"]
    for keys, group in b2n.groupby([*KEY, *VERSION], sort=True):
        spaces = group.set_index("space")
        if not {"base", "novel"} <= set(spaces.index):
            continue
        base, novel = spaces.loc["base"], spaces.loc["novel"]
        applicable = bool(base["applicable"] and novel["applicable"])
        hm = harmonic_mean(base["mean"], novel["mean"]) if applicable else math.nan
        rows.append(
            _cell(
                dict(zip([*KEY, *VERSION], keys, strict=True)),
                "hm",
                "hm",
                hm,
                n=min(base["n"], novel["n"]),
                conflict=bool(base["conflict"] or novel["conflict"]),
                generated=bool(base["generated"] or novel["generated"]),
            )
        )
    return rows


def _average_row(
    keys: Any, dataset: str, space: str, values: list[float], n: int, generated: bool
) -> dict[str, Any]:
    """A mean over datasets (or targets); NaN (not applicable) if any value is."""
    mean = math.nan if any(math.isnan(v) for v in values) else math.fsum(values) / len(values)
    key_cols = {**dict(zip(ROW, keys, strict=True)), "dataset": dataset, **dict.fromkeys(VERSION, "")}
    return _cell(key_cols, space, "average", mean, n_datasets=n, generated=generated)


def _dataset_averages(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """ "Average" rows over the datasets of each (protocol, backbone) table, where complete."""
    rows: list[dict[str, Any]] = []
    tables = cells[cells["protocol"].isin(["fewshot", "base2novel"])]
    for _, table in tables.groupby(["protocol", "backbone"], sort=True):
        datasets = set(table["dataset"])
        for keys, group in table.groupby(ROW, sort=True):
            if set(group["dataset"]) != datasets or group["conflict"].any():
                continue  # incomplete or conflicted: no average (the display says why)
            means = {s: g["mean"].tolist() for s, g in group.groupby("space")}
            generated = bool(group["generated"].any())
            averages = {
                space: _average_row(keys, AVERAGE, space, means[space], len(datasets), generated)
                for space in ("all", "base", "novel")
                if space in means
            }
            rows.extend(averages.values())
            if "base" in averages and "novel" in averages:
                base, novel = averages["base"]["mean"], averages["novel"]["mean"]
                # The convention of the CoCoOp/MaPLe tables: HM of the averaged base and novel.
                hm = harmonic_mean(base, novel) if not math.isnan(base + novel) else math.nan
                rows.append(_average_row(keys, AVERAGE, "hm", [hm], len(datasets), generated))
                per_dataset = means.get("hm", [math.nan])
                rows.append(
                    _average_row(keys, AVERAGE, "hm_per_dataset_mean", per_dataset, len(datasets), generated)
                )
    return rows


def _target_means(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """Mean over targets for cross-dataset / domain-generalization rows, where complete."""
    rows: list[dict[str, Any]] = []
    tables = cells[~cells["protocol"].isin(["fewshot", "base2novel"]) & (cells["space"] != "all")]
    for _, table in tables.groupby(["protocol", "backbone"], sort=True):
        targets = set(table["space"])
        for keys, group in table.groupby(KEY, sort=True):
            if set(group["space"]) != targets or group["conflict"].any():
                continue
            generated = bool(group["generated"].any())
            row = _average_row(keys[:-1], keys[-1], "mean", group["mean"].tolist(), len(targets), generated)
            rows.append(row)
    return rows


def _build_cells(records: pd.DataFrame) -> pd.DataFrame:
    import pandas as pd

    ok = records[(records["status"] == "ok") & (records["space"] != "")].copy()
    # Missing versions compare equal to each other ("" == ""), never to a real version.
    ok[VERSION] = ok[VERSION].fillna("").astype(str)
    seeds = pd.DataFrame(_seed_cells(ok), columns=CELL_COLUMNS)
    groups = seeds.drop_duplicates([*KEY, *VERSION]).groupby(KEY).size()
    conflicted = set(groups[groups > 1].index)
    seeds["conflict"] = [tuple(k) in conflicted for k in seeds[KEY].itertuples(index=False)]
    cells = pd.concat([seeds, pd.DataFrame(_hm_cells(seeds), columns=seeds.columns)], ignore_index=True)
    averages = _dataset_averages(cells) + _target_means(cells)
    cells = pd.concat([cells, pd.DataFrame(averages, columns=cells.columns)], ignore_index=True)
    cells = cells[CELL_COLUMNS].astype(
        {
            "shots": "int64",
            "n": "float64",
            "n_datasets": "float64",
            "applicable": "bool",
            "conflict": "bool",
            "generated": "bool",
        }
    )
    return _sort(cells)


# ------------------------------------------------------------------------------------------
# Published numbers


def _canonical_backbone(text: str) -> str:
    try:
        return BackboneSpec.parse(text).id
    except ConfigError:
        return text


def read_reported(reported_dir: Path) -> pd.DataFrame:
    """Published numbers from ``reported_dir/*.csv`` (columns :data:`REPORTED_COLUMNS`)."""
    import pandas as pd

    frames = []
    for path in sorted(Path(reported_dir).glob("*.csv")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        missing = [c for c in REPORTED_COLUMNS if c not in frame.columns]
        if missing:
            raise ConfigError(
                f"Reported numbers file {path} lacks column(s) {', '.join(missing)}; "
                f"expected {', '.join(REPORTED_COLUMNS)}."
            )
        try:
            frame = frame.assign(shots=frame["shots"].astype(int), accuracy=frame["accuracy"].astype(float))
        except ValueError as exc:
            raise ConfigError(f"Reported numbers file {path}: bad shots or accuracy value ({exc}).") from None
        frames.append(frame[REPORTED_COLUMNS])
    if not frames:
        return pd.DataFrame(columns=REPORTED_COLUMNS)
    reported = pd.concat(frames, ignore_index=True)
    lower = {"average": AVERAGE, "avg": AVERAGE}
    return reported.assign(
        backbone=reported["backbone"].map(_canonical_backbone),
        dataset=reported["dataset"].map(lambda d: lower.get(d.strip().lower(), d.strip())),
        space=reported["space"].map(
            lambda s: (
                s.strip().lower()
                if s.strip().lower() in SPACE_ORDER or s.strip().lower() == "mean"
                else s.strip() or "all"
            )
        ),
    )


def _join_reported(cells: pd.DataFrame, reported: pd.DataFrame) -> pd.DataFrame:
    """Add ``reported``, ``reported_diff`` (reproduced minus published) and ``citation``."""
    published = reported.rename(columns={"method": "variant", "accuracy": "reported"})
    on = ["protocol", "backbone", "variant", "dataset", "shots", "space"]
    merged = cells.merge(published, on=on, how="left", sort=False)
    merged["reported_diff"] = merged["mean"] - merged["reported"]
    return merged[[*CELL_COLUMNS, "reported", "reported_diff", "citation"]].astype({"reported": "float64"})


# ------------------------------------------------------------------------------------------
# Display tables (strings)


def _cell_text(sub: pd.DataFrame) -> str:
    """One wide-table cell: "mean ± ci95 (n=seeds)", "n/a", "—", or the conflict mark."""
    if sub.empty:
        return MISSING
    if len(sub) > 1:
        return f"⚠ {len(sub)} versions"
    row = sub.iloc[0]
    if not row["applicable"]:
        return NA
    mark = f" {GENERATED}" if row["generated"] else ""
    if row["kind"] != "seeds":
        return f"{row['mean']:.2f}{mark}"
    return f"{row['mean']:.2f} ± {row['ci95']:.2f} (n={int(row['n'])}){mark}"


def _pick(group: pd.DataFrame, dataset: str, space: str) -> pd.DataFrame:
    return group[(group["dataset"] == dataset) & (group["space"] == space)]


def _fewshot_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Rows (backbone, method, shots) x dataset columns, with the Average over datasets."""
    import pandas as pd

    table = cells[(cells["protocol"] == "fewshot") & (cells["space"] == "all")]
    rows = []
    for backbone, bb in table.groupby("backbone", sort=True):
        datasets = _ordered(bb.loc[bb["dataset"] != AVERAGE, "dataset"].tolist())
        for (variant, shots), group in bb.groupby(["variant", "shots"], sort=True):
            row = {"Backbone": backbone, "Method": variant, "Shots": int(shots)}
            row.update({d: _cell_text(_pick(group, d, "all")) for d in datasets})
            have = sum(not _pick(group, d, "all").empty for d in datasets)
            row["Average"] = _cell_text(_pick(group, AVERAGE, "all"))
            row["Datasets"] = f"{have}/{len(datasets)}"
            rows.append(row)
    columns = [
        "Backbone",
        "Method",
        "Shots",
        *_ordered(table["dataset"][table["dataset"] != AVERAGE].tolist()),
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
        datasets = _ordered(bb.loc[bb["dataset"] != AVERAGE, "dataset"].tolist())
        for (variant, shots), group in bb.groupby(["variant", "shots"], sort=True):
            for row in _b2n_rows(group, datasets):
                rows.append({"Backbone": backbone, "Method": variant, "Shots": int(shots), **row})
    columns = [
        "Backbone",
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
    targets_all = _ordered(table.loc[~table["space"].isin(["all", "mean"]), "space"].tolist())
    rows = []
    for backbone, bb in table.groupby("backbone", sort=True):
        targets = _ordered(bb.loc[~bb["space"].isin(["all", "mean"]), "space"].tolist())
        for (variant, shots, source), group in bb.groupby(["variant", "shots", "dataset"], sort=True):
            row = {
                "Backbone": backbone,
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

    ident = ["Backbone", "Method", "Shots"]
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
        "variant": "Method",
        "shots": "Shots",
        "dataset": "Dataset",
        "space": "Space",
        "dataset_version": "Dataset version",
        "split_hash": "Split hash",
        "method_version": "Method version",
    }
    table = _display(conflicted.replace({c: {"": "?"} for c in VERSION}), names)
    table["Accuracy"] = [_cell_text(conflicted.loc[[i]]) for i in conflicted.index]
    return table


def _comparison_table(cells: pd.DataFrame) -> pd.DataFrame:
    matched = cells[cells["reported"].notna()]
    names = {
        "protocol": "Protocol",
        "backbone": "Backbone",
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


# ------------------------------------------------------------------------------------------
# Entry points


def build_leaderboard(results_dir: Path, reported_dir: Path | None = None) -> Leaderboard:
    """Aggregate every record under ``results_dir`` (and published numbers) into tables.

    ``reported_dir``: a folder of CSV files of published numbers (``results/reported``),
    or None for none. Pure: reads files, writes nothing.
    """
    import pandas as pd

    records = load_records(results_dir)
    reported = (
        read_reported(reported_dir) if reported_dir is not None else pd.DataFrame(columns=REPORTED_COLUMNS)
    )
    cells = _join_reported(_build_cells(records), reported)
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
        n_records=int(records["spec_hash"].nunique()),
        source=str(results_dir),
    )


def _md_escape(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return str(value).replace("|", "\\|").replace("\n", " ")


def _md_table(frame: pd.DataFrame, drop: Sequence[str] = ()) -> str:
    columns = [c for c in frame.columns if c not in drop]
    lines = ["| " + " | ".join(_md_escape(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    for row in frame[columns].itertuples(index=False):
        lines.append("| " + " | ".join(_md_escape(v) for v in row) + " |")
    return "\n".join(lines)


def _md_by_backbone(frame: pd.DataFrame, heading: str) -> list[str]:
    """One sub-table per backbone, without the columns that backbone does not use."""
    parts = []
    for backbone, sub in frame.groupby("Backbone", sort=True):
        sub = sub.dropna(axis=1, how="all")
        parts += [f"### {heading} — backbone `{backbone}`", "", _md_table(sub, drop=["Backbone"]), ""]
    return parts


_CONVENTIONS = """\
## Conventions

- Accuracy is overall top-1 on the test split, in percent. A cell is `mean ± 95% CI (n=seeds)`;
  the CI is 1.96·std/√n with the population std over seeds (CoOp's `parse_test_res.py`).
- Few-shot **Average**: the unweighted mean of the per-dataset means, shown only where the method
  has every dataset of its table; `Datasets` says how many it has (k/n).
- Base-to-novel: per dataset, **HM** is the harmonic mean of the seed means of base and novel.
  In the **Average** row, **HM** is the harmonic mean of the averaged base and averaged novel
  accuracies (the convention of the CoCoOp, MaPLe and PromptSRC tables); the mean of the
  per-dataset HMs, the other convention, is given beside it.
- Cross-dataset / domain generalization: one column per target dataset; the mean is over every
  target of the table.
- `n/a`: the method cannot classify that label space (e.g. novel classes for a linear probe);
  it is never counted as 0. `—`: no result.
- `†`: at least one run of the cell (or of the datasets averaged) used a split that fewshot
  generated because the official split file was absent (`split_source` "generated" in the
  record): not comparable with published numbers.
- Failed runs are listed below and never averaged. Runs whose dataset version, split hash or
  method version differ are never averaged together: such cells read `⚠ k versions`, block
  the averages that need them, and each version group is listed under Conflicts.
"""


def to_markdown(lb: Leaderboard) -> str:
    """The Markdown page of a leaderboard (deterministic: no dates, sorted rows)."""
    parts = [
        "# Leaderboard",
        "",
        f"Generated by `fewshot leaderboard` from {lb.n_records} records in `{lb.source}`. "
        "Do not edit by hand: regenerate it.",
        "",
        _CONVENTIONS,
    ]
    if not lb.fewshot.empty:
        parts += ["## Few-shot classification", "", *_md_by_backbone(lb.fewshot, "Few-shot")]
    if not lb.base2novel.empty:
        parts += ["## Base-to-novel generalization", "", *_md_by_backbone(lb.base2novel, "Base-to-novel")]
    for protocol, table in lb.transfer.items():
        parts += [f"## {protocol}", "", *_md_by_backbone(table, protocol)]
    if not lb.comparison.empty:
        parts += ["## Reproduced vs published", "", _md_table(lb.comparison), ""]
    if not lb.conflicts.empty:
        parts += [
            "## Conflicts",
            "",
            "Version groups that are not averaged together.",
            "",
            _md_table(lb.conflicts),
            "",
        ]
    parts += ["## Failed runs", "", _md_table(lb.failed) if not lb.failed.empty else "None.", ""]
    return "\n".join(parts)


def write_leaderboard(lb: Leaderboard, out_dir: Path) -> list[Path]:
    """Write ``leaderboard.csv`` (``lb.cells``) and ``LEADERBOARD.md`` atomically; return the paths."""
    out_dir = Path(out_dir)
    csv_path, md_path = out_dir / "leaderboard.csv", out_dir / "LEADERBOARD.md"
    # A fixed float format keeps the file identical across platforms for identical records.
    atomic_write_text(csv_path, lb.cells.to_csv(index=False, float_format="%.4f", lineterminator="\n"))
    atomic_write_text(md_path, to_markdown(lb))
    return [csv_path, md_path]


# ------------------------------------------------------------------------------------------
# End-of-sweep summary


def _summary_mean(group: pd.DataFrame, keys: tuple[Any, ...], spaces: list[str]) -> dict[str, Any]:
    """The "mean" row of one (method, backbone, protocol, shots) group of the summary."""
    mean = {c: group[c].mean(skipna=False) for c in spaces}
    if "hm" in mean and not math.isnan(mean["base"] + mean["novel"]):
        mean["hm"] = harmonic_mean(mean["base"], mean["novel"])
    ident = dict(zip(["method", "backbone", "protocol", "shots"], keys, strict=True))
    return {
        **ident,
        "dataset": "mean",
        **mean,
        "seeds": group["seeds"].sum(),
        "failed": group["failed"].sum(),
    }


def summary_table(results: list[RunResult]) -> pd.DataFrame:
    """Per (method, backbone, protocol, shots, dataset): the seed mean of each label space.

    Columns: method, backbone, protocol, shots, dataset, then ``accuracy`` (space "all"),
    ``base``, ``novel``, ``hm`` (from the seed means) and any target spaces, then ``seeds``
    (runs that succeeded) and ``failed``. NaN is not applicable or not measured. Where a
    group has several datasets a row with dataset "mean" follows: the mean of the dataset
    rows (NaN if any is NaN) and, for base-to-novel, the HM of the mean base and novel.
    Methods and datasets keep the order of the sweep.
    """
    import pandas as pd

    frame = records_frame(results)
    group_cols = ["variant", "backbone", "protocol", "shots", "dataset"]
    ok = frame[(frame["status"] == "ok") & (frame["space"] != "")]
    means = ok.pivot_table(index=group_cols, columns="space", values="accuracy", aggfunc="mean", dropna=False)
    runs = frame.drop_duplicates("spec_hash").assign(ok=lambda f: f["status"] == "ok")
    # A seed counts once, and as failed if any of its records failed (transfer runs write
    # one record per target).
    per_seed = runs.groupby([*group_cols, "seed"])["ok"].all().reset_index()
    counts = per_seed.groupby(group_cols)["ok"].agg(seeds="sum", failed=lambda s: int((~s).sum()))
    table = counts.join(means, how="left").rename(columns={"all": "accuracy"}).reset_index()
    if {"base", "novel"} <= set(table.columns):
        table["hm"] = [
            harmonic_mean(b, n) if not math.isnan(b + n) else math.nan
            for b, n in zip(table["base"], table["novel"], strict=True)
        ]
    spaces = [c for c in ("accuracy", "base", "novel", "hm") if c in table.columns]
    spaces += sorted(c for c in means.columns if c not in ("all", "base", "novel"))
    first = {c: {v: i for i, v in enumerate(dict.fromkeys(frame[c]))} for c in ("variant", "dataset")}
    table = table.sort_values(
        group_cols,
        key=lambda col: col.map(first.get(str(col.name), {})) if col.name in first else col,
        kind="mergesort",
    )
    table = table[[*group_cols, *spaces, "seeds", "failed"]].rename(columns={"variant": "method"})
    rows = []
    for keys, group in table.groupby(["method", "backbone", "protocol", "shots"], sort=False):
        rows.append(group)
        if len(group) > 1:
            rows.append(pd.DataFrame([_summary_mean(group, keys, spaces)]))
    out = pd.concat(rows, ignore_index=True) if rows else table
    return out.astype({"seeds": "int64", "failed": "int64"})
