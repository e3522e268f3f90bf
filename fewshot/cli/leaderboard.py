"""``fewshot leaderboard``: rebuild the tables from the run records."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from rich.text import Text

from fewshot.cli._common import ResultsOpt, console, err_console, frame_table, opt, split_list
from fewshot.types import FewshotError

if TYPE_CHECKING:
    from fewshot.leaderboard import Leaderboard

__all__ = ["DEFAULT_FORMATS", "leaderboard_command"]

# The formats of write_leaderboard (fewshot.leaderboard.render.FORMATS), named here so that
# `fewshot --help` does not import the leaderboard package.
FORMAT_NAMES = ("csv", "md", "html", "latex")
DEFAULT_FORMATS = ("csv", "md", "html")


def _formats(values: list[str] | None) -> list[str]:
    formats = split_list(values) or list(DEFAULT_FORMATS)
    unknown = [f for f in formats if f not in FORMAT_NAMES]
    if unknown:
        raise FewshotError(
            f"Unknown --format {', '.join(unknown)}; expected one or more of {', '.join(FORMAT_NAMES)}."
        )
    return formats


def leaderboard_command(
    results: ResultsOpt = Path("results/runs"),
    reported: Annotated[
        Path | None,
        opt(
            "--reported",
            metavar="DIR",
            help="Published numbers (*.csv). \\[default: RESULTS/../reported if present, else the "
            "checkout's results/reported]",
        ),
    ] = None,
    out: Annotated[
        Path | None, opt("--out", metavar="DIR", help="Where to write the files. \\[default: RESULTS]")
    ] = None,
    fmt: Annotated[
        list[str] | None,
        opt(
            "--format",
            "-f",
            metavar="FORMATS",
            help="Files to write, comma list or repeated: csv (leaderboard.csv), md (LEADERBOARD.md), "
            "html (leaderboard.html: tables and plots in one self-contained page), latex "
            "(leaderboard.tex: booktabs tables). \\[default: csv,md,html]",
        ),
    ] = None,
) -> None:
    """Rebuild leaderboard.csv, LEADERBOARD.md and leaderboard.html (or the --format files) from
    the run records, in the results folder read (so two results folders never overwrite each
    other's tables) or --out."""
    from fewshot._io import ensure_writable_dir
    from fewshot.leaderboard import build_leaderboard, write_leaderboard

    formats = _formats(fmt)
    if results.exists() and not results.is_dir():
        raise FewshotError(f"The results path {results} is a file, not a folder: pass --results DIR.")
    if not results.is_dir():
        raise FewshotError(f"No results folder {results}: run `fewshot run` first, or pass --results DIR.")
    target = out if out is not None else results
    ensure_writable_dir(target, "The leaderboard folder", "pass --out DIR to write the tables elsewhere")
    lb = build_leaderboard(results, _reported_dir(results, reported))
    paths = write_leaderboard(lb, target, formats)
    _say(lb, paths)


def _reported_dir(results: Path, reported: Path | None) -> Path | None:
    """--reported, else RESULTS/../reported if present, else the checkout's results/reported."""
    from fewshot.reported import default_reported_dir

    if reported is None:
        beside = results.parent / "reported"
        return beside if beside.is_dir() else default_reported_dir()
    if not reported.is_dir():
        raise FewshotError(f"--reported {reported} is not a folder of CSV files.")
    return reported


def _say(lb: Leaderboard, paths: list[Path]) -> None:
    """The headline numbers, warnings about failed runs and conflicts, and the files written."""
    if not lb.headline.empty:
        console.print(frame_table(lb.headline, "Headline numbers", ("Protocol", "Backbone", "Precision")))
    if not lb.failed.empty:
        err_console.print(Text(f"{len(lb.failed)} failed runs are listed under Failed runs.", style="yellow"))
    if not lb.conflicts.empty:
        err_console.print(
            Text("Some cells mix dataset, split, method or code versions: see Conflicts.", style="yellow")
        )
    written = ", ".join(str(p) for p in paths)
    console.print(f"Wrote {written} ({lb.n_records} records).", markup=False, soft_wrap=True)
