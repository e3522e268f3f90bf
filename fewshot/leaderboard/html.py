"""``leaderboard.html``: one self-contained page of tables and plots.

Everything is inline (styles, SVG plots); there is no script, font or image to fetch, so the
page opens from disk, offline, and can be mailed or archived as one file. It is deterministic
for the same records (no dates; plots as in :mod:`.plots`). Layout: a header with the
headline numbers and a table of contents, then one section per protocol (tables per backbone
and precision, then their plots), reproduced vs reported, conflicts, failed runs and the
conventions. Wide tables scroll inside their box, so the page itself stays readable at
1280 px.
"""

from __future__ import annotations

import math
from html import escape
from typing import TYPE_CHECKING

from fewshot.leaderboard.grids import (
    PROTOCOL_TITLES,
    Grid,
    Value,
    b2n_grids,
    comparison_rows,
    fewshot_grids,
    transfer_grids,
)
from fewshot.leaderboard.tables import GENERATED, MISSING, NA, SELECTED_ON_TEST, Leaderboard

if TYPE_CHECKING:
    import pandas as pd

    from fewshot.leaderboard.plots import Style

__all__ = ["NO_PUBLISHED", "to_html"]

NO_PUBLISHED = "no published number"

_CSS = """
:root { --fg: #1d1d1f; --muted: #6e6e73; --line: #d2d2d7; --best: #e3f4e1; --head: #f5f5f7; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
  max-width: 1240px; margin: 0 auto; padding: 0 20px 48px; }
h1 { font-size: 26px; margin: 24px 0 4px; } h2 { font-size: 20px; margin: 36px 0 8px;
  border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 16px; margin: 24px 0 6px; } h4 { font-size: 14px; margin: 18px 0 6px; }
p, li { max-width: 960px; overflow-wrap: anywhere; } .muted { color: var(--muted); }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; background: var(--head);
  padding: 1px 4px; border-radius: 3px; }
nav ul { display: flex; flex-wrap: wrap; gap: 4px 18px; padding: 0; list-style: none; }
.scroll { overflow-x: auto; max-width: 100%; margin: 6px 0 12px; }
table { border-collapse: collapse; font-size: 13px; }
th, td { padding: 3px 9px; border-bottom: 1px solid var(--line); text-align: left; white-space: nowrap; }
thead th { background: var(--head); position: sticky; top: 0; }
tbody + tbody { border-top: 2px solid #a1a1a6; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.best { background: var(--best); } td.best strong { font-weight: 700; }
.ci, .n { color: var(--muted); font-size: 11px; } .mark { color: #b3261e; font-weight: 700; }
td.na, td.missing { color: var(--muted); text-align: center; } td.conflict { color: #b3261e; }
td.none { color: var(--muted); font-style: italic; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(360px, 1fr)); gap: 12px; }
figure { margin: 0; } figure.wide { grid-column: 1 / -1; max-width: 760px; }
figure.square { max-width: 520px; } td.source { white-space: normal; min-width: 220px; }
figure svg { width: 100%; height: auto; display: block; }
figcaption { font-size: 12px; color: var(--muted); }
"""


# ------------------------------------------------------------------------------------------
# Cells and tables


def _marks(value: Value) -> str:
    found = []
    if value.generated:
        found.append(f'<span class="mark" title="generated split">{GENERATED}</span>')
    if value.selected_on_test:
        found.append(f'<span class="mark" title="selected on test">{SELECTED_ON_TEST}</span>')
    return "".join(f" {m}" for m in found)


def value_html(value: Value) -> str:
    """One ``<td>``: mean ± CI (n=seeds) and marks; the best of its group in bold."""
    if value.state == "blank":
        return "<td></td>"
    if value.state == "na":
        return f'<td class="na">{NA}{_marks(value)}</td>'
    if value.state == "missing":
        return f'<td class="missing">{MISSING}</td>'
    if value.state == "conflict":
        return f'<td class="conflict" title="version groups not averaged">⚠ {value.versions} versions</td>'
    number = f"{value.mean:.2f}"
    text = f"<strong>{number}</strong>" if value.best else number
    if not math.isnan(value.ci95):
        text += f'<span class="ci"> ± {value.ci95:.2f}</span>'
    if value.n:
        text += f'<span class="n"> (n={value.n})</span>'
    css = "num best" if value.best else "num"
    return f'<td class="{css}" data-value="{number}">{text}{_marks(value)}</td>'


def grid_html(grid: Grid) -> str:
    """A grid as a table: one ``<tbody>`` per row group; a label repeated from the row above
    within its group is left blank."""
    head = "".join(f"<th>{escape(c)}</th>" for c in (*grid.label_columns, *grid.columns))
    bodies = []
    for group in dict.fromkeys(row.group for row in grid.rows):
        lines: list[str] = []
        previous: tuple[str, ...] = ()
        for row in (r for r in grid.rows if r.group == group):
            labels = [
                "" if i == 0 and previous and previous[0] == label else escape(label)
                for i, label in enumerate(row.labels)
            ]
            previous = row.labels
            cells = "".join(f"<th scope='row'>{label}</th>" for label in labels)
            lines.append(f"<tr>{cells}{''.join(value_html(v) for v in row.values)}</tr>")
        bodies.append(f'<tbody data-group="{escape(group)}">{"".join(lines)}</tbody>')
    table = (
        f'<table class="grid" id="table-{grid.slug}"><thead><tr>{head}</tr></thead>{"".join(bodies)}</table>'
    )
    return f'<div class="scroll">{table}</div>'


def frame_html(frame: pd.DataFrame, css: str = "") -> str:
    """A frame of display strings as a plain table."""
    head = "".join(f"<th>{escape(str(c))}</th>" for c in frame.columns)
    rows = [
        "<tr>" + "".join(f"<td>{escape(_text(v))}</td>" for v in row) + "</tr>"
        for row in frame.itertuples(index=False)
    ]
    table = f'<table class="{css}"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


def _text(value: object) -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)


def _figure(svg: str, name: str, caption: str, css: str = "") -> str:
    css = f' class="{css}"' if css else ""
    return f'<figure{css} data-plot="{escape(name)}">{svg}<figcaption>{escape(caption)}</figcaption></figure>'


# ------------------------------------------------------------------------------------------
# Sections


def _fewshot_plots(grid: Grid, costs: pd.DataFrame, style: Style) -> list[str]:
    from fewshot.leaderboard.plots import cost_points, cost_svg, shots_svg

    last = len(grid.columns) - 1
    figures = [
        _figure(
            shots_svg(grid, last, style, f"{grid.slug}-average", large=True),
            f"shots-{grid.slug}-average",
            "Average over datasets vs shots: mean over seeds, band = 95% CI (from the per-dataset "
            "CIs); dashed lines are methods that read no support images (recorded at 0 shots).",
            "wide",
        )
    ]
    for i, dataset in enumerate(grid.columns[:last]):
        svg = shots_svg(grid, i, style, f"{grid.slug}-{i}")
        figures.append(_figure(svg, f"shots-{grid.slug}-{dataset}", f"{dataset}: mean over seeds ± 95% CI."))
    parts = ["<h4>Accuracy vs shots</h4>", f'<div class="plots">{"".join(figures)}</div>']
    points = cost_points(grid, costs)
    if points:
        svg = cost_svg(points, style, f"{grid.slug}-cost")
        caption = (
            "Average accuracy against the mean fit time of one run and the trainable parameters "
            "(symmetric log scales; labels: shots). Only rows with an Average are shown."
        )
        parts += ["<h4>Cost vs accuracy</h4>", _figure(svg, f"cost-{grid.slug}", caption, "wide")]
    return parts


def _b2n_plot(grid: Grid, style: Style) -> list[str]:
    from fewshot.leaderboard.plots import scatter_svg

    missing = sorted({r.labels[1] for r in grid.rows if r.group == "Average" and r.values[1].state == "na"})
    caption = "Average base vs novel accuracy (large markers; small: each dataset), over curves of equal HM."
    if missing:
        caption += f" Not shown (novel classes n/a): {', '.join(missing)}."
    svg = scatter_svg(grid, style, f"{grid.slug}-scatter")
    return ["<h4>Base vs novel</h4>", _figure(svg, f"scatter-{grid.slug}", caption, "square")]


def _protocol_section(protocol: str, grids: list[Grid], extra: dict[str, list[str]]) -> str:
    parts = [f'<section id="{protocol}"><h2>{escape(PROTOCOL_TITLES.get(protocol, protocol))}</h2>']
    for grid in grids:
        parts += [f"<h3>{escape(grid.backbone)} · {escape(grid.precision)}</h3>", grid_html(grid)]
        parts += extra.get(grid.slug, [])
    return "".join(parts) + "</section>"


def comparison_html(cells: pd.DataFrame) -> str:
    """Reproduced beside published, with the difference (reproduced − published)."""
    head = ["Protocol", "Backbone", "Precision", "Method", "Shots", "Dataset", "Space"]
    columns = [*head, "Reproduced", "Published", "Δ (reproduced − published)", "Source"]
    lines = []
    for row in comparison_rows(cells):
        keys = (row[k] for k in ("protocol", "backbone", "precision", "method", "shots", "dataset", "space"))
        ident = "".join(f"<td>{escape(str(k))}</td>" for k in keys)
        if math.isnan(row["reported"]):
            published = f'<td class="none">{NO_PUBLISHED}</td><td class="missing">{MISSING}</td><td></td>'
        else:
            diff = f"{row['diff']:+.2f}" if not math.isnan(row["diff"]) else NA
            published = (
                f'<td class="num">{row["reported"]:.2f}</td><td class="num">{diff}</td>'
                f'<td class="source">{escape(row["citation"])}</td>'
            )
        lines.append(f"<tr>{ident}{value_html(row['reproduced'])}{published}</tr>")
    head_html = "".join(f"<th>{escape(c)}</th>" for c in columns)
    body = "".join(lines)
    table = f'<table id="table-reported"><thead><tr>{head_html}</tr></thead><tbody>{body}</tbody></table>'
    return f'<div class="scroll">{table}</div>'


_CONVENTIONS = f"""
<section id="conventions"><h2>Conventions</h2><ul>
<li>Accuracy is top-1 on the test split, in percent. A cell is <em>mean</em>
<span class="ci">± 95% CI</span> <span class="n">(n=seeds)</span>; the CI is 1.96·std/√n with the
population std over seeds. A cell of one seed has no interval.</li>
<li>Few-shot <strong>Average</strong>: the unweighted mean of the per-dataset means, only where
the method has every dataset of its table. Its interval is √(Σ CI²)/D from the D per-dataset
intervals (datasets are independent runs); none where a dataset has one seed.</li>
<li>Base-to-novel <strong>HM</strong> per dataset is the harmonic mean of the seed means; on the
Average row it is the HM of the averaged base and novel (CoCoOp, MaPLe, PromptSRC), with the mean
of the per-dataset HMs beside it.</li>
<li><strong>Bold on green</strong>: the best mean of its column within its group (a shot count, a
dataset, a source), where the group has at least two numbers in that column.</li>
<li><span class="mark">{GENERATED}</span>: a run of the cell (or of what it averages) used a split
that fewshot generated because the official split file was absent: not comparable with published
numbers.</li>
<li><span class="mark">{SELECTED_ON_TEST}</span>: a run of the cell (or of what it averages) chose
something (an epoch, a hyper-parameter) by its test accuracy (<code>selected_on_test</code> in the
record's provenance; built-in methods only under a released protocol kept for reproduction,
e.g. Tip-Adapter's <code>protocol=original</code>).</li>
<li>{NA}: the method cannot classify that label space (it is never counted as 0). {MISSING}: no
result. ⚠ <em>k</em> versions: runs of different dataset, split, method or code versions, never
averaged together (see Conflicts).</li>
<li>Methods that read no support images (zero-shot) are recorded at 0 shots: one number for every
shot count, drawn as a dashed flat line.</li>
</ul></section>
"""


def _nav(sections: list[tuple[str, str]]) -> str:
    links = "".join(f'<li><a href="#{key}">{escape(title)}</a></li>' for key, title in sections)
    return f"<nav><ul>{links}</ul></nav>"


def _protocol_sections(lb: Leaderboard, style: Style) -> list[tuple[str, str, str]]:
    """(id, title, html) of each protocol present, in protocol order."""
    out = []
    fewshot = fewshot_grids(lb.cells)
    if fewshot:
        plots = {g.slug: _fewshot_plots(g, lb.costs, style) for g in fewshot}
        out.append(("fewshot", PROTOCOL_TITLES["fewshot"], _protocol_section("fewshot", fewshot, plots)))
    b2n = b2n_grids(lb.cells)
    if b2n:
        plots = {g.slug: _b2n_plot(g, style) for g in b2n}
        out.append(("base2novel", PROTOCOL_TITLES["base2novel"], _protocol_section("base2novel", b2n, plots)))
    transfer = transfer_grids(lb.cells)
    for protocol in dict.fromkeys(g.protocol for g in transfer):
        grids = [g for g in transfer if g.protocol == protocol]
        out.append((protocol, PROTOCOL_TITLES[protocol], _protocol_section(protocol, grids, {})))
    return out


def _other_sections(lb: Leaderboard) -> list[tuple[str, str, str]]:
    out = []
    if not lb.cells.empty:
        intro = (
            "<p>Every method's headline cells (averages, means over targets) and every cell with a "
            "published number (<code>results/reported/</code>); the difference is reproduced minus "
            "published.</p>"
        )
        table = comparison_html(lb.cells)
        body = f'<section id="reported"><h2>Reproduced vs reported</h2>{intro}{table}</section>'
        out.append(("reported", "Reproduced vs reported", body))
    if not lb.conflicts.empty:
        intro = "<p>Version groups that are not averaged together.</p>"
        body = f'<section id="conflicts"><h2>Conflicts</h2>{intro}{frame_html(lb.conflicts)}</section>'
        out.append(("conflicts", "Conflicts", body))
    failed = frame_html(lb.failed) if not lb.failed.empty else "<p>None.</p>"
    out.append(("failed", "Failed runs", f'<section id="failed"><h2>Failed runs</h2>{failed}</section>'))
    out.append(("conventions", "Conventions", _CONVENTIONS))
    return out


def to_html(lb: Leaderboard) -> str:
    """The whole page (deterministic: no dates, sorted rows, salted SVG ids)."""
    from fewshot.leaderboard.plots import Style

    style = Style(lb.cells["variant"].astype(str).tolist())
    sections = _protocol_sections(lb, style) + _other_sections(lb)
    headline = frame_html(lb.headline, "headline") if not lb.headline.empty else ""
    header = (
        "<header><h1>Leaderboard</h1>"
        f'<p class="muted">Generated by <code>fewshot leaderboard</code> from {lb.n_records} records in '
        f"<code>{escape(lb.source)}</code>. Do not edit by hand: regenerate it.</p>"
        f"{_nav([(key, title) for key, title, _ in sections])}{headline}</header>"
    )
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>fewshot leaderboard</title><style>{_CSS}</style></head>\n"
        f"<body>{header}<main>{''.join(body for _, _, body in sections)}</main></body></html>\n"
    )
