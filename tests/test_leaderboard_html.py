"""The leaderboard page and the LaTeX tables, on synthetic records of the toy suite.

The records are written with ``write_record`` (no training): zero-shot (0 shots), a linear
probe and CoOp at 1/4/16 shots, seeds 1-3, on the four toy datasets; base-to-novel for the
three; a cross-dataset run; one generated split, one run selected on test, costs, and one
published number in a temporary ``reported`` folder. Accuracies follow a formula, so the
best values are known: CoOp is best at every shot count, the linear probe second.

``test_page_in_chromium`` opens the page in headless Chromium over the DevTools protocol
(``tests/_browser.py``) and is skipped where no Chromium is installed, unless
``FEWSHOT_REQUIRE_BROWSER=1`` (set by ``.ci/run``) turns the skip into a failure.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fewshot.cli import app
from fewshot.leaderboard import build_leaderboard
from fewshot.leaderboard.html import NO_PUBLISHED, to_html
from fewshot.leaderboard.latex import tex_escape, to_latex
from fewshot.results import write_record
from fewshot.types import RunResult, RunSpec

DATASETS = ("toy-shapes", "toy-colors", "toy-textures", "toy-objects")
BASE = {"zeroshot": 50.0, "linear-probe": 50.0, "coop": 56.0}
GAIN = {"zeroshot": 0.0, "linear-probe": 3.0, "coop": 4.0}  # points per doubling of shots
PARAMS = {"zeroshot": 0, "linear-probe": 2_000, "coop": 4_096}
NOVEL = {"zeroshot": 64.0, "coop": 60.0}  # base-to-novel: the linear probe has no novel classes


def accuracy(method: str, shots: int, dataset_index: int, seed: int) -> float:
    """log2(shots)·gain above the method's base, +1 per dataset index, seeds at -1/0/+1."""
    doublings = shots.bit_length() - 1 if shots else 0
    return BASE[method] + GAIN[method] * doublings + dataset_index + (seed - 2)


def _write(root: Path, spec: RunSpec, metrics: dict[str, float | None], **prov: object) -> None:
    costs = {
        "wall_time_s": 1.0,
        "fit_time_s": 0.01 + 0.5 * spec.shots,
        "trainable_params": PARAMS[spec.method],
    }
    provenance = {"split_hash": "s1", "dataset_version": "1", "split_source": "split.json", **prov}
    result = RunResult(spec, "ok", metrics, costs, {}, provenance)
    write_record(result, spec.record_path(root))


def toy_records(root: Path) -> Path:
    for method in BASE:
        for shots in (0,) if method == "zeroshot" else (1, 4, 16):
            for i, dataset in enumerate(DATASETS):
                for seed in (1, 2, 3):
                    prov: dict[str, object] = {}
                    if method == "linear-probe" and dataset == "toy-textures":
                        prov["split_source"] = "generated"
                    if method == "coop" and shots == 1 and dataset == "toy-colors":
                        prov["selected_on_test"] = True
                    metrics = {"all": accuracy(method, shots, i, seed)}
                    _write(root, RunSpec(method, dataset, shots=shots, seed=seed), metrics, **prov)
    for method, shots in (("zeroshot", 0), ("linear-probe", 16), ("coop", 16)):
        for i, dataset in enumerate(DATASETS):
            for seed in (1, 2, 3):
                base = accuracy(method, shots, i, seed) + 10
                novel = NOVEL.get(method)
                novel = None if novel is None else novel + i + (seed - 2)
                spec = RunSpec(method, dataset, shots=shots, seed=seed, protocol="base2novel")
                _write(root, spec, {"base": base, "novel": novel})
    for seed in (1, 2):
        spec = RunSpec("coop", "toy-shapes", seed=seed, protocol="cross-dataset")
        _write(root, spec, {"all": 70.0 + seed, "toy-colors": 60.0 + seed, "toy-textures": 50.0})
    return root


def reported_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "reported"
    folder.mkdir()
    (folder / "paper.csv").write_text(
        "method,backbone,protocol,dataset,shots,space,value,source,location,reference,how,primary\n"
        "coop,toy,fewshot,Average,16,all,70.25,paper,"
        '"Table 1, arXiv:0000.00000",arXiv:0000.00000,copied,yes\n'
    )
    return folder


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("toy")
    return toy_records(tmp / "runs"), reported_folder(tmp)


# ------------------------------------------------------------------------------------------
# The page without a browser


class Page(HTMLParser):
    """Tables (rows of (tag, class, text) cells), figures and SVGs of a page."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tables: dict[str, list[list[tuple[str, str, str]]]] = {}
        self.svgs = 0
        self.figures: list[str] = []
        self.external: list[str] = []
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table":
            self._table = a.get("id") or f"table-{len(self.tables)}"
            self.tables[self._table] = []
        elif tag == "tr" and self._table:
            self.tables[self._table].append([])
        elif tag in ("td", "th") and self._table:
            self._cell = [tag, a.get("class") or "", ""]
        elif tag == "svg":
            self.svgs += 1
        elif tag == "figure":
            self.figures.append(a.get("data-plot") or "")
        for key in ("src", "href"):
            if a.get(key) and not str(a[key]).startswith("#"):
                self.external.append(f"{tag} {key}={a[key]}")
        if tag in ("script", "link", "img", "iframe", "object"):
            self.external.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._table:
            self.tables[self._table][-1].append((self._cell[0], self._cell[1], self._cell[2].strip()))
            self._cell = None
        elif tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell[2] += data


def rows(page: Page, table: str) -> dict[tuple[str, ...], list[tuple[str, str, str]]]:
    """Body rows of a table keyed by their row labels (``th``), blanks filled from above."""
    out, previous = {}, ()
    for cells in page.tables[table][1:]:
        labels = tuple(c[2] for c in cells if c[0] == "th")
        labels = tuple(lab or (previous[i] if i < len(previous) else "") for i, lab in enumerate(labels))
        previous = labels
        out[labels] = [c for c in cells if c[0] == "td"]
    return out


@pytest.fixture(scope="module")
def page(toy: tuple[Path, Path]) -> Page:
    return Page(to_html(build_leaderboard(*toy)))


def test_page_tables_marks_and_best(page: Page) -> None:
    table = rows(page, "table-fewshot-toy-fp32")
    header = [c[2] for c in page.tables["table-fewshot-toy-fp32"][0]]
    assert header == ["Method", "Shots", *DATASETS, "Average"]
    coop16 = table[("coop", "16")]
    # coop at 16 shots on toy-shapes: 56 + 4*4 + 0 + (-1, 0, 1) -> mean 72, ci95 1.96*0.8165/sqrt(3) = 0.92
    assert coop16[0][2] == "72.00 ± 0.92 (n=3)"
    # Average: 72 + (0+1+2+3)/4 = 73.50; CI sqrt(4 * 0.92396^2) / 4 = 0.46
    assert coop16[-1][2] == "73.50 ± 0.46"
    # coop beats the linear probe (50 + 3*4 = 62) in every column at 16 shots: marked best.
    assert all("best" in c[1] for c in coop16)
    assert not any("best" in c[1] for c in table[("linear-probe", "16")])
    assert not any("best" in c[1] for c in table[("zeroshot", "0")])  # alone in its group
    lp = table[("linear-probe", "4")]
    assert lp[2][2].endswith("†") and not lp[0][2].endswith("†")  # the generated split
    assert lp[-1][2].endswith("†")  # ... up through the average
    assert table[("coop", "1")][1][2].endswith("‡") and table[("coop", "1")][-1][2].endswith("‡")
    assert not table[("coop", "4")][1][2].endswith("‡")


def test_page_base_to_novel(page: Page) -> None:
    table = rows(page, "table-base2novel-toy-fp32")
    assert [c[2] for c in page.tables["table-base2novel-toy-fp32"][0]][:6] == [
        "Dataset",
        "Method",
        "Shots",
        "Base",
        "Novel",
        "HM",
    ]
    lp = table[("Average", "linear-probe", "16")]
    assert (lp[1][2], lp[2][2]) == ("n/a", "n/a")  # novel classes: n/a, never 0
    coop = table[("Average", "coop", "16")]
    # coop base: 72 + 1.5 + 10 = 83.5; novel 60 + 1.5 = 61.5; HM = 2*83.5*61.5/145 = 70.83
    assert coop[0][2].startswith("83.50") and coop[1][2].startswith("61.50") and coop[2][2] == "70.83"
    zs = table[("Average", "zeroshot", "0")]
    assert zs[1][2].startswith("65.50") and "best" in zs[1][1]  # zero-shot keeps the best novel
    assert "best" in coop[0][1] and "best" not in table[("Average", "linear-probe", "16")][0][1]


def test_page_reported_column(page: Page) -> None:
    table = page.tables["table-reported"]
    header = [c[2] for c in table[0]]
    published, diff = header.index("Published"), header.index("Δ (reproduced − published)")
    by_key = {(r[3][2], r[4][2], r[6][2]): r for r in table[1:]}
    coop = by_key[("coop", "16", "all")]
    assert (coop[published][2], coop[diff][2]) == ("70.25", "+3.25")  # 73.50 - 70.25
    assert "arXiv:0000.00000" in coop[header.index("Source")][2]
    lp = by_key[("linear-probe", "16", "all")]
    assert lp[published][2] == NO_PUBLISHED
    assert sum(r[published][2] == NO_PUBLISHED for r in table[1:]) == len(table) - 2


def test_page_plots_and_self_contained(page: Page, toy: tuple[Path, Path]) -> None:
    expected = {
        "shots-fewshot-toy-fp32-average",
        *(f"shots-fewshot-toy-fp32-{d}" for d in DATASETS),
        "cost-fewshot-toy-fp32",
        "scatter-base2novel-toy-fp32",
    }
    assert set(page.figures) == expected and page.svgs == len(expected)
    assert page.external == []  # no script, stylesheet, image or font to fetch
    text = to_html(build_leaderboard(*toy))
    assert text == to_html(build_leaderboard(*toy))  # deterministic
    ids = re.findall(r'\bid="([^"]+)"', text)
    assert len(ids) == len(set(ids))  # SVG ids are unique across the page
    assert "table-cross-dataset-toy-fp32" in page.tables


def test_latex_tables(toy: tuple[Path, Path]) -> None:
    tex = to_latex(build_leaderboard(*toy))
    assert tex.count(r"\begin{tabular}") == 3 and tex.count(r"\toprule") == 3
    assert r"coop & 16 & \textbf{72.00}{\scriptsize$\pm$0.92}" in tex
    assert r"\textsuperscript{\dag}" in tex and r"\textsuperscript{\ddag}" in tex
    assert "Few-shot classification --- toy, fp32" in tex
    assert tex_escape("coop[n_ctx=4]_50% & #1 {x} ~ ^ \\") == (
        r"coop{[}n\_ctx=4{]}\_50\% \& \#1 \{x\} \textasciitilde{} \textasciicircum{} \textbackslash{}"
    )


def test_latex_compiles(toy: tuple[Path, Path], tmp_path: Path) -> None:
    """Where pdflatex is installed (texlive-latex-recommended has booktabs), the tables
    compile, with a method variant full of LaTeX's special characters."""
    import shutil

    if shutil.which("pdflatex") is None:
        pytest.skip("no pdflatex installed")
    root = toy_records(tmp_path / "runs")
    for seed in (1, 2):
        odd = (("ctx_init", r"[a]_#photo & 50%~{x}^\end"),)
        _write(root, RunSpec("coop", "toy-shapes", seed=seed, overrides=odd), {"all": 70.0 + seed})
    tex = to_latex(build_leaderboard(root))
    preamble = "\\documentclass{article}\\usepackage{booktabs}\\usepackage{graphicx}\\begin{document}\n"
    (tmp_path / "doc.tex").write_text(preamble + tex + "\n\\end{document}\n")
    done = subprocess.run(
        ["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "doc.tex"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-2000:]


def test_cli_formats(toy: tuple[Path, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    runs, reported = toy
    args = ["leaderboard", "--results", str(runs), "--reported", str(reported)]
    out = runner.invoke(app, [*args, "--out", str(tmp_path / "all")])
    assert out.exit_code == 0, out.output
    names = sorted(p.name for p in (tmp_path / "all").iterdir())
    assert names == ["LEADERBOARD.md", "leaderboard.csv", "leaderboard.html"]
    out = runner.invoke(app, [*args, "--out", str(tmp_path / "tex"), "--format", "latex"])
    assert out.exit_code == 0 and [p.name for p in (tmp_path / "tex").iterdir()] == ["leaderboard.tex"]
    bad = runner.invoke(app, [*args, "--out", str(tmp_path / "x"), "--format", "pdf"])
    assert bad.exit_code == 2 and "Unknown --format pdf" in bad.output


# ------------------------------------------------------------------------------------------
# In a real browser

_CHECK_JS = """(() => {
  const box = e => { const r = e.getBoundingClientRect(); return [r.width, r.height]; };
  return {
    tables: [...document.querySelectorAll('table')].map(t => [t.id, t.tBodies.length ?
      [...t.tBodies].reduce((n, b) => n + b.rows.length, 0) : 0, ...box(t)]),
    plots: [...document.querySelectorAll('figure')].map(f => {
      const svg = f.querySelector('svg');
      return [f.dataset.plot, svg ? box(svg) : [0, 0],
              svg ? svg.querySelectorAll('path, line, use').length : 0,
              svg ? svg.querySelectorAll('text').length : 0];
    }),
    scrollWidth: document.documentElement.scrollWidth,
    title: document.title,
  };
})()"""


def _browser_or_skip() -> str:
    """The Chromium to drive; a skip without one (or without websocket-client), a failure
    instead where ``FEWSHOT_REQUIRE_BROWSER=1`` (CI)."""
    from tests._browser import Browser

    required = os.environ.get("FEWSHOT_REQUIRE_BROWSER") == "1"
    exe = Browser.find()
    if exe is None:
        message = "no Chromium installed (apt-get install chromium)"
        if required:
            pytest.fail(f"FEWSHOT_REQUIRE_BROWSER=1 but {message}")
        pytest.skip(message)
    if not required:
        pytest.importorskip("websocket", reason="websocket-client (the dev extra) drives Chromium")
    return exe


def test_page_in_chromium(toy: tuple[Path, Path], tmp_path: Path) -> None:
    from tests._browser import Browser

    exe = _browser_or_skip()
    runs, reported = toy
    out = CliRunner().invoke(
        app, ["leaderboard", "--results", str(runs), "--reported", str(reported), "--out", str(tmp_path)]
    )
    assert out.exit_code == 0, out.output
    browser = Browser(exe, tmp_path / "profile")
    try:
        browser.open((tmp_path / "leaderboard.html").as_uri())
        found = browser.evaluate(_CHECK_JS)
        browser.screenshot(tmp_path / "leaderboard.png")
        errors, requests = browser.errors(), browser.requests()
    finally:
        browser.close()
    assert found["title"] == "fewshot leaderboard"
    tables = {t[0]: t[1:] for t in found["tables"]}
    for name in ("table-fewshot-toy-fp32", "table-base2novel-toy-fp32", "table-reported"):
        n_rows, width, height = tables[name]
        assert n_rows > 0 and width > 100 and height > 50, (name, tables[name])
    assert len(found["plots"]) == 7
    for name, (width, height), marks, texts in found["plots"]:
        assert width > 200 and height > 120 and marks > 10 and texts > 3, (name, width, height, marks)
    assert found["scrollWidth"] <= 1280  # no sideways scrolling at 1280 px: wide tables scroll inside
    assert errors == []
    assert [u for u in requests if not u.startswith(("file:", "data:"))] == []  # nothing fetched
    png = (tmp_path / "leaderboard.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000


def test_matplotlib_is_imported_only_for_the_page() -> None:
    code = (
        "import sys, fewshot, fewshot.cli, fewshot.leaderboard, fewshot.leaderboard.latex; "
        "print(sorted(m for m in ('matplotlib', 'websocket') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
