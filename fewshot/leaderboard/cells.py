"""Cells of the leaderboard: seeds aggregated per (protocol, backbone, precision, method
variant, shots, dataset, label space), with HM and average cells, and published numbers
joined where they match. The numeric source of every table (:mod:`.tables`)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from fewshot.metrics import aggregate, harmonic_mean
from fewshot.types import PROTOCOLS

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AVERAGE",
    "CELL_COLUMNS",
    "FLAGS",
    "KEY",
    "ROW",
    "SPACE_ORDER",
    "VERSION",
    "build_cells",
    "cost_cells",
    "join_reported",
    "ordered",
]

KEY = ["protocol", "backbone", "precision", "method", "variant", "shots", "dataset"]
# Seeds average only within one version group; groups that differ under one KEY conflict.
# "knowledge" names the description sets (name and content hash) a run used.
VERSION = ["dataset_version", "split_hash", "method_version", "code_digest", "knowledge"]
ROW = ["protocol", "backbone", "precision", "method", "variant", "shots"]  # a row of a wide table
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
    "selected_on_test",
    *VERSION,
]
AVERAGE = "Average"  # the dataset name of average rows
SPACE_ORDER = ["all", "base", "novel", "hm", "hm_per_dataset_mean"]  # then targets, then "mean"
FLAGS = ("generated", "selected_on_test")  # marks that carry up from any run to every average


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
    by = ["_p", "backbone", "precision", "variant", "shots", "_d", "_s", *[c for c in VERSION if c in frame]]
    return keyed.sort_values(by, kind="mergesort").drop(columns=["_p", "_d", "_s"]).reset_index(drop=True)


def ordered(names: Sequence[str]) -> list[str]:
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
        "selected_on_test": False,
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
                selected_on_test=bool(group["selected_on_test"].any()),
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
                **{flag: bool(base[flag] or novel[flag]) for flag in FLAGS},
            )
        )
    return rows


def _flags(group: pd.DataFrame) -> dict[str, bool]:
    """The marks of an average: set where any cell averaged has them."""
    return {flag: bool(group[flag].any()) for flag in FLAGS}


def _average_row(
    keys: Any, dataset: str, space: str, values: list[float], n: int, flags: dict[str, bool]
) -> dict[str, Any]:
    """A mean over datasets (or targets); NaN (not applicable) if any value is."""
    mean = math.nan if any(math.isnan(v) for v in values) else math.fsum(values) / len(values)
    key_cols = {**dict(zip(ROW, keys, strict=True)), "dataset": dataset, **dict.fromkeys(VERSION, "")}
    return _cell(key_cols, space, "average", mean, n_datasets=n, **flags)


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
            flags = _flags(group)
            averages = {
                space: _average_row(keys, AVERAGE, space, means[space], len(datasets), flags)
                for space in ("all", "base", "novel")
                if space in means
            }
            rows.extend(averages.values())
            if "base" in averages and "novel" in averages:
                base, novel = averages["base"]["mean"], averages["novel"]["mean"]
                # The convention of the CoCoOp/MaPLe tables: HM of the averaged base and novel.
                hm = harmonic_mean(base, novel) if not math.isnan(base + novel) else math.nan
                rows.append(_average_row(keys, AVERAGE, "hm", [hm], len(datasets), flags))
                per_dataset = means.get("hm", [math.nan])
                rows.append(
                    _average_row(keys, AVERAGE, "hm_per_dataset_mean", per_dataset, len(datasets), flags)
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
            row = _average_row(
                keys[:-1], keys[-1], "mean", group["mean"].tolist(), len(targets), _flags(group)
            )
            rows.append(row)
    return rows


def _warn_mixed_code(seeds: pd.DataFrame) -> None:
    """One warning per cell whose seeds came from different code (they are not averaged)."""
    import warnings

    for keys, group in seeds.groupby(KEY, sort=True):
        digests = sorted(set(group["code_digest"]))
        if len(digests) > 1:
            where = dict(zip(KEY, keys, strict=True))
            names = ", ".join(d or "none recorded" for d in digests)
            warnings.warn(
                f"{where['variant']} on {where['dataset']} ({where['protocol']}, {where['shots']} shots, "
                f"{where['backbone']}, {where['precision']}): seeds come from {len(digests)} versions of "
                f"the method's code ({names}) and are not averaged; `fewshot run` reruns the stale ones.",
                stacklevel=3,
            )


def build_cells(records: pd.DataFrame) -> pd.DataFrame:
    """One row per cell (:data:`CELL_COLUMNS`) from the records frame of ``load_records``."""
    import pandas as pd

    ok = records[(records["status"] == "ok") & (records["space"] != "")].copy()
    # Missing versions compare equal to each other ("" == ""), never to a real version.
    ok[VERSION] = ok.reindex(columns=VERSION).fillna("").astype(str)
    seeds = pd.DataFrame(_seed_cells(ok), columns=CELL_COLUMNS)
    groups = seeds.drop_duplicates([*KEY, *VERSION]).groupby(KEY).size()
    conflicted = set(groups[groups > 1].index)
    seeds["conflict"] = [tuple(k) in conflicted for k in seeds[KEY].itertuples(index=False)]
    _warn_mixed_code(seeds)
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
            "selected_on_test": "bool",
        }
    )
    return _sort(cells)


def cost_cells(records: pd.DataFrame) -> pd.DataFrame:
    """Per method row (:data:`ROW`): the mean ``fit_time_s`` and ``trainable_params`` of its ok
    runs (one per dataset and seed; NaN where no run recorded them) and ``runs``, the count."""
    import pandas as pd

    runs = records[records["status"] == "ok"].drop_duplicates("spec_hash")
    costs = runs.groupby(ROW, sort=True).agg(
        fit_time_s=("fit_time_s", "mean"),
        trainable_params=("trainable_params", "mean"),
        runs=("spec_hash", "size"),
    )
    columns = [*ROW, "fit_time_s", "trainable_params", "runs"]
    return (
        pd.DataFrame(costs.reset_index(), columns=columns)
        if not runs.empty
        else pd.DataFrame(columns=columns)
    )


def join_reported(cells: pd.DataFrame, reported: pd.DataFrame) -> pd.DataFrame:
    """Add ``reported``, ``reported_diff`` (reproduced minus published) and ``citation``.

    Published numbers are joined on (protocol, backbone, method variant, dataset, shots,
    space), whatever the precision of the reproduced runs (the official code runs fp16).
    Only each key's primary row joins (``fewshot.reported``: where sources disagree, one row
    is primary and the others are kept for reference).
    """
    on = ["protocol", "backbone", "variant", "dataset", "shots", "space"]
    primary = reported[reported["primary"].astype(bool)]
    published = primary.rename(columns={"method": "variant", "accuracy": "reported"})[
        [*on, "reported", "citation"]
    ]
    merged = cells.merge(published, on=on, how="left", sort=False)
    merged["reported_diff"] = merged["mean"] - merged["reported"]
    return merged[[*CELL_COLUMNS, "reported", "reported_diff", "citation"]].astype({"reported": "float64"})
