"""The plots of the HTML page, drawn with matplotlib into inline SVG strings.

matplotlib is imported here only, inside the functions (never at ``import fewshot``). No
pyplot: each figure is a bare ``Figure``, so no GUI backend or global figure state is
involved. The SVG is deterministic for the same numbers: no date or creator metadata, text
kept as text (``svg.fonttype`` none: small, no embedded glyphs, no external font), and the
ids of clip paths salted per plot (``svg.hashsalt``) and each ``<svg>`` given its own id
(``svg.id``, matplotlib 3.8+), so they are stable and distinct across the plots of a page.

Every plot reads the numbers of a :class:`~fewshot.leaderboard.grids.Grid`, so a plot and
its table never disagree.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from fewshot.leaderboard.grids import Grid, Value

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = ["Style", "cost_svg", "scatter_svg", "shots_svg"]

_COLORS = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
_MARKERS = "osD^vP*Xh<>"
_RC: dict[str, Any] = {
    "svg.fonttype": "none",
    "font.size": 9,
    "axes.titlesize": 10,
    "legend.fontsize": 7,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
}
Point = tuple[int, Value]  # (shots, value)


class Style:
    """One colour and marker per method variant, the same in every plot of a page."""

    def __init__(self, variants: list[str]) -> None:
        self._index = {v: i for i, v in enumerate(sorted(set(variants)))}

    def color(self, variant: str) -> str:
        return _COLORS[self._index.get(variant, 0) % len(_COLORS)]

    def marker(self, variant: str) -> str:
        return _MARKERS[self._index.get(variant, 0) % len(_MARKERS)]


@contextmanager
def _figure(salt: str, size: tuple[float, float], ncols: int = 1) -> Iterator[tuple[Figure, list[Axes]]]:
    """A bare figure under the page's rc settings, with ids salted by ``salt``."""
    import matplotlib
    from matplotlib.figure import Figure

    rc: dict[Any, Any] = {**_RC, "svg.hashsalt": f"fewshot-{salt}", "svg.id": f"plot-{salt}"}
    with matplotlib.rc_context(rc):
        fig = Figure(figsize=size, layout="constrained")
        axes = fig.subplots(1, ncols, squeeze=False)[0].tolist()
        yield fig, axes


_ID = re.compile(r'(\sid=")([^"]+)"')
_REF = re.compile(r'(url\(#|href="#)([^)"]+)')


def _svg(fig: Figure, salt: str) -> str:
    """The figure as an ``<svg>`` element (no XML prolog or doctype, no metadata).

    matplotlib numbers its element ids per figure (``axes_1``, ``patch_1``, ...); inside one
    page they would repeat, so every id but the root's (``svg.id``) and every reference to
    one get the root's id as a prefix.
    """
    buf = io.StringIO()
    fig.savefig(buf, format="svg", metadata={"Date": None, "Creator": None})
    text = buf.getvalue()
    text = text[text.index("<svg") :].strip()
    root_end = text.index(">") + 1
    prefix = f"plot-{salt}"  # the root's id (svg.id)
    body = _ID.sub(lambda m: f'{m[1]}{prefix}-{m[2]}"', text[root_end:])
    body = _REF.sub(lambda m: f"{m[1]}{prefix}-{m[2]}", body)
    return text[:root_end] + body


# ------------------------------------------------------------------------------------------
# Accuracy vs shots


def curves(grid: Grid, column: int) -> dict[str, list[Point]]:
    """Per method variant, its (shots, value) points in one column of a few-shot grid."""
    out: dict[str, list[Point]] = {}
    for row in grid.rows:
        value = row.values[column]
        if value.ok:
            out.setdefault(row.labels[0], []).append((int(row.labels[1]), value))
    return {variant: sorted(points, key=lambda p: p[0]) for variant, points in out.items()}


def _band(value: Value) -> float:
    return 0.0 if math.isnan(value.ci95) else value.ci95


def _draw_curve(ax: Axes, variant: str, points: list[Point], style: Style) -> None:
    color = style.color(variant)
    trained = [(k, v) for k, v in points if k > 0]
    for k, v in points:
        if k == 0:  # a method that reads no support images: one number for every shot count
            ax.axhline(v.mean, color=color, linestyle="--", linewidth=1.2, label=f"{variant} (0 shots)")
            if _band(v):
                ax.axhspan(v.mean - v.ci95, v.mean + v.ci95, color=color, alpha=0.12, linewidth=0)
    if not trained:
        return
    xs = [k for k, _ in trained]
    means = [v.mean for _, v in trained]
    bands = [_band(v) for _, v in trained]
    ax.plot(xs, means, color=color, marker=style.marker(variant), markersize=4, linewidth=1.4, label=variant)
    low = [m - b for m, b in zip(means, bands, strict=True)]
    high = [m + b for m, b in zip(means, bands, strict=True)]
    ax.fill_between(xs, low, high, color=color, alpha=0.15, linewidth=0)


def shots_svg(grid: Grid, column: int, style: Style, salt: str, large: bool = False) -> str:
    """Accuracy vs shots in one column (a dataset or the Average) of a few-shot grid: one
    line per method with its 95% CI band; 0-shot methods as flat dashed lines."""
    size = (6.4, 3.8) if large else (4.2, 2.9)
    with _figure(salt, size) as (fig, (ax,)):
        data = curves(grid, column)
        shots = sorted({k for points in data.values() for k, _ in points if k > 0}) or [1]
        for variant, points in data.items():
            _draw_curve(ax, variant, points, style)
        ax.set_xscale("log", base=2)
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.minorticks_off()
        ax.set_xlim(shots[0] / 1.3, shots[-1] * 1.3)
        ax.set_xlabel("shots per class")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(grid.columns[column])
        if data:
            ax.legend(loc="best", frameon=False)
        return _svg(fig, salt)


# ------------------------------------------------------------------------------------------
# Base vs novel


def _iso_hm(ax: Axes, lo: float, hi: float) -> None:
    """Dotted curves of constant HM h (novel = h·base / (2·base − h)) inside the square
    [lo, hi]², every 5 points, labelled at their lower end."""
    for h in range(5, 100, 5):
        if not lo < h < hi:
            continue
        # novel falls as base grows: novel <= hi from the first bound, novel >= lo up to the second.
        start = max(lo, h * hi / (2 * hi - h))
        end = min(hi, h * lo / (2 * lo - h)) if 2 * lo > h else hi
        xs = [start + (end - start) * i / 60 for i in range(61)]
        ys = [h * x / (2 * x - h) for x in xs]
        ax.plot(xs, ys, color="#999999", linestyle=":", linewidth=0.8, zorder=0)
        ax.annotate(f"HM {h}", (xs[-1], ys[-1]), fontsize=6, color="#777777", ha="right", va="bottom")


def scatter_svg(grid: Grid, style: Style, salt: str) -> str:
    """Average base vs average novel accuracy of each method of a base-to-novel grid (filled
    markers), its datasets as small faint markers, over iso-HM curves."""
    points = [
        (row, row.values[0], row.values[1]) for row in grid.rows if row.values[0].ok and row.values[1].ok
    ]
    with _figure(salt, (5.2, 4.4)) as (fig, (ax,)):
        numbers = [x for _, b, n in points for x in (b.mean, n.mean)] or [0.0, 100.0]
        lo, hi = max(0.0, min(numbers) - 5), min(100.0, max(numbers) + 5)
        _iso_hm(ax, lo, hi)
        for row, base, novel in points:
            variant, average = row.labels[1], row.group == "Average"
            ax.scatter(
                [base.mean],
                [novel.mean],
                color=style.color(variant),
                marker=style.marker(variant),
                s=48 if average else 12,
                alpha=1.0 if average else 0.35,
                label=f"{variant} ({row.labels[2]} shots)" if average else None,
                zorder=3 if average else 2,
            )
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_aspect("equal")
        ax.set_xlabel("base accuracy (%)")
        ax.set_ylabel("novel accuracy (%)")
        if points:
            ax.legend(loc="lower left", frameon=False)
        return _svg(fig, salt)


# ------------------------------------------------------------------------------------------
# Cost vs accuracy


def cost_points(grid: Grid, costs: pd.DataFrame) -> list[dict[str, Any]]:
    """Per row of a few-shot grid with an Average: its mean fit time and trainable parameters."""
    points = []
    table = costs[
        (costs["protocol"] == grid.protocol)
        & (costs["backbone"] == grid.backbone)
        & (costs["precision"] == grid.precision)
    ]
    for row in grid.rows:
        average = row.values[-1]
        match = table[(table["variant"] == row.labels[0]) & (table["shots"] == int(row.labels[1]))]
        if average.ok and not match.empty:
            cost = match.iloc[0]
            points.append(
                {
                    "variant": row.labels[0],
                    "shots": int(row.labels[1]),
                    "accuracy": average.mean,
                    "fit_time_s": float(cost["fit_time_s"]),
                    "trainable_params": float(cost["trainable_params"]),
                }
            )
    return points


def _cost_axis(ax: Axes, points: list[dict[str, Any]], key: str, style: Style) -> None:
    shown = [p for p in points if not math.isnan(p[key])]
    for p in shown:
        variant = p["variant"]
        ax.scatter([p[key]], [p["accuracy"]], color=style.color(variant), marker=style.marker(variant), s=30)
        ax.annotate(
            f"{p['shots']}", (p[key], p["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )
    ax.set_xscale("symlog", linthresh=0.01 if key == "fit_time_s" else 1.0)
    ax.set_xlabel("fit time per run (s)" if key == "fit_time_s" else "trainable parameters")
    if not shown:
        ax.text(0.5, 0.5, "not recorded", transform=ax.transAxes, ha="center", color="#777777")


def cost_svg(points: list[dict[str, Any]], style: Style, salt: str) -> str:
    """Few-shot Average accuracy against mean fit time and against trainable parameters; one
    marker per (method, shots), labelled with its shot count."""
    from matplotlib.lines import Line2D

    with _figure(salt, (8.4, 3.2), ncols=2) as (fig, axes):
        for ax, key in zip(axes, ("fit_time_s", "trainable_params"), strict=True):
            _cost_axis(ax, points, key, style)
        axes[0].set_ylabel("average accuracy (%)")
        variants = sorted({p["variant"] for p in points})
        handles = [
            Line2D([], [], color=style.color(v), marker=style.marker(v), linestyle="", label=v)
            for v in variants
        ]
        if handles:
            axes[1].legend(handles=handles, loc="best", frameon=False)
        return _svg(fig, salt)
