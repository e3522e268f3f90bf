"""Numeric display grids: the tables of the HTML page and of the LaTeX output, built once from
the cells so both mark the same best values and the same cells.

A :class:`Grid` is one table (one protocol, backbone and precision): label columns (method,
shots, ...), value columns (datasets, base/novel/HM, targets), and rows of :class:`Value`.
Rows belong to a group (a shot count, a dataset, a source): the best value of each column
is marked within its group, never across shot counts or datasets.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from fewshot.leaderboard.cells import AVERAGE, ordered
from fewshot.types import PROTOCOLS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "Grid",
    "GridRow",
    "Value",
    "average_ci95",
    "b2n_grids",
    "comparison_rows",
    "fewshot_grids",
    "transfer_grids",
]

PROTOCOL_TITLES = {
    "fewshot": "Few-shot classification",
    "base2novel": "Base-to-novel generalization",
    "cross-dataset": "Cross-dataset transfer",
    "domain-generalization": "Domain generalization",
}
HM_MEAN = "HM (mean of dataset HMs)"


@dataclass(frozen=True)
class Value:
    """One table cell. ``state``: ``ok`` (a number), ``na`` (the method cannot classify that
    space), ``missing`` (no result), ``conflict`` (``versions`` version groups, not averaged)
    or ``blank`` (the column does not apply to the row). ``ci95`` is NaN where there is no
    interval (one seed, an HM); ``n`` is the number of seeds (0 for averages)."""

    mean: float = math.nan
    ci95: float = math.nan
    n: int = 0
    state: str = "missing"
    versions: int = 0
    generated: bool = False
    selected_on_test: bool = False
    best: bool = False

    @property
    def ok(self) -> bool:
        return self.state == "ok"


@dataclass
class GridRow:
    labels: tuple[str, ...]
    values: list[Value]
    group: str = ""


@dataclass
class Grid:
    protocol: str
    backbone: str
    precision: str
    label_columns: tuple[str, ...]
    columns: list[str]
    rows: list[GridRow] = field(default_factory=list)

    @property
    def title(self) -> str:
        return f"{PROTOCOL_TITLES.get(self.protocol, self.protocol)} — {self.backbone}, {self.precision}"

    @property
    def slug(self) -> str:
        text = f"{self.protocol}-{self.backbone}-{self.precision}".lower()
        return "".join(c if c.isalnum() else "-" for c in text)


# ------------------------------------------------------------------------------------------
# Values


def value_of(sub: pd.DataFrame, ci95: float | None = None) -> Value:
    """The :class:`Value` of the cells rows ``sub`` (one row, or several version groups)."""
    if sub.empty:
        return Value()
    if len(sub) > 1:
        return Value(state="conflict", versions=len(sub))
    row = sub.iloc[0]
    flags = {"generated": bool(row["generated"]), "selected_on_test": bool(row["selected_on_test"])}
    if not row["applicable"]:
        return Value(state="na", **flags)
    n = int(row["n"]) if row["kind"] == "seeds" else 0
    ci = float(row["ci95"]) if row["kind"] == "seeds" and n > 1 else math.nan
    if ci95 is not None:
        ci = ci95
    return Value(mean=float(row["mean"]), ci95=ci, n=n, state="ok", **flags)


def average_ci95(per_dataset: list[Value]) -> float:
    """The 95% CI half-width of an unweighted mean of D independent per-dataset means:
    √(Σ ci_d²) / D. NaN unless every dataset has an interval (two seeds or more)."""
    if not per_dataset or any(not v.ok or math.isnan(v.ci95) for v in per_dataset):
        return math.nan
    return math.sqrt(math.fsum(v.ci95**2 for v in per_dataset)) / len(per_dataset)


def _pick(group: pd.DataFrame, dataset: str, space: str) -> pd.DataFrame:
    return group[(group["dataset"] == dataset) & (group["space"] == space)]


def _by_table(cells: pd.DataFrame, protocol: str) -> Iterator[tuple[str, str, pd.DataFrame]]:
    table = cells[cells["protocol"] == protocol]
    for (backbone, precision), sub in table.groupby(["backbone", "precision"], sort=True):
        yield str(backbone), str(precision), sub


def mark_best(grid: Grid) -> Grid:
    """Mark the highest mean (to the 2 decimals shown) of each column within each row group,
    where at least two rows of the group have a number in that column."""
    for group in dict.fromkeys(row.group for row in grid.rows):
        rows = [row for row in grid.rows if row.group == group]
        for col in range(len(grid.columns)):
            numbers = [round(row.values[col].mean, 2) for row in rows if row.values[col].ok]
            if len(numbers) < 2:
                continue
            top = max(numbers)
            for row in rows:
                value = row.values[col]
                if value.ok and round(value.mean, 2) == top:
                    row.values[col] = replace(value, best=True)
    return grid


# ------------------------------------------------------------------------------------------
# Grids per protocol


def fewshot_grids(cells: pd.DataFrame) -> list[Grid]:
    """Rows (method, shots), grouped by shots; columns the datasets and the Average (its CI
    from the per-dataset CIs, :func:`average_ci95`)."""
    grids = []
    for backbone, precision, table in _by_table(cells[cells["space"] == "all"], "fewshot"):
        datasets = ordered(table.loc[table["dataset"] != AVERAGE, "dataset"].tolist())
        grid = Grid("fewshot", backbone, precision, ("Method", "Shots"), [*datasets, AVERAGE])
        for (shots, variant), group in table.groupby(["shots", "variant"], sort=True):
            values = [value_of(_pick(group, d, "all")) for d in datasets]
            average = value_of(_pick(group, AVERAGE, "all"), ci95=average_ci95(values))
            grid.rows.append(GridRow((str(variant), str(shots)), [*values, average], f"{shots} shots"))
        grids.append(mark_best(grid))
    return grids


def _b2n_row(group: pd.DataFrame, dataset: str, key: tuple[str, int], datasets: list[str]) -> GridRow:
    """One row; an Average row's base and novel get the CI of their per-dataset CIs."""
    spaces, (variant, shots) = ("base", "novel", "hm"), key
    values = [value_of(_pick(group, dataset, s)) for s in spaces]
    if dataset == AVERAGE:
        for i, space in enumerate(spaces[:2]):
            ci = average_ci95([value_of(_pick(group, d, space)) for d in datasets])
            values[i] = value_of(_pick(group, dataset, space), ci95=ci)
    hm_mean = value_of(_pick(group, AVERAGE, "hm_per_dataset_mean")) if dataset == AVERAGE else None
    values.append(hm_mean if hm_mean is not None else Value(state="blank"))
    return GridRow((dataset, variant, str(shots)), values, dataset)


def b2n_grids(cells: pd.DataFrame) -> list[Grid]:
    """Rows (dataset, method, shots), grouped by dataset with the Average first; columns
    Base, Novel, HM and, on Average rows, the mean of the per-dataset HMs."""
    grids = []
    for backbone, precision, table in _by_table(cells, "base2novel"):
        datasets = ordered(table.loc[table["dataset"] != AVERAGE, "dataset"].tolist())
        columns = ["Base", "Novel", "HM", HM_MEAN]
        grid = Grid("base2novel", backbone, precision, ("Dataset", "Method", "Shots"), columns)
        methods = table.groupby(["variant", "shots"], sort=True)
        for dataset in [AVERAGE, *datasets]:
            for (variant, shots), group in methods:
                if (group["dataset"] == dataset).any() or dataset == AVERAGE:
                    grid.rows.append(_b2n_row(group, dataset, (str(variant), int(shots)), datasets))
        grids.append(mark_best(grid))
    return grids


def transfer_grids(cells: pd.DataFrame) -> list[Grid]:
    """Per transfer protocol: rows (method, shots, source), grouped by source; columns the
    source's own accuracy, each target and the mean over targets."""
    grids = []
    for protocol in PROTOCOLS[2:]:
        for backbone, precision, table in _by_table(cells, protocol):
            targets = ordered(table.loc[~table["space"].isin(["all", "mean"]), "space"].tolist())
            columns = ["Source", *targets, "Mean over targets"]
            grid = Grid(protocol, backbone, precision, ("Method", "Shots", "Trained on"), columns)
            keys = ["dataset", "shots", "variant"]
            for (source, shots, variant), group in table.groupby(keys, sort=True):
                spaces = ["all", *targets, "mean"]
                values = [value_of(_pick(group, str(source), s)) for s in spaces]
                grid.rows.append(GridRow((str(variant), str(shots), str(source)), values, str(source)))
            grids.append(mark_best(grid))
    return grids


# ------------------------------------------------------------------------------------------
# Reproduced vs reported


def comparison_rows(cells: pd.DataFrame) -> list[dict[str, Any]]:
    """The headline cells of every method (few-shot and base-to-novel averages, means over
    targets) and every cell with a published number: reproduced, published, difference and
    citation (``reported`` NaN where there is no published number)."""
    headline = (cells["kind"] == "average") & (cells["space"] != "hm_per_dataset_mean")
    rows = []
    for _, row in cells[headline | cells["reported"].notna()].iterrows():
        sub = cells.loc[[row.name]]
        reproduced = value_of(sub)
        rows.append(
            {
                "protocol": str(row["protocol"]),
                "backbone": str(row["backbone"]),
                "precision": str(row["precision"]),
                "method": str(row["variant"]),
                "shots": int(row["shots"]),
                "dataset": str(row["dataset"]),
                "space": str(row["space"]),
                "reproduced": reproduced,
                "reported": float(row["reported"]),
                "diff": float(row["reported_diff"]) if reproduced.ok else math.nan,
                "citation": str(row["citation"]) if isinstance(row["citation"], str) else "",
            }
        )
    return rows
