"""``fewshot leaderboard``: rebuild the tables from the run records."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from rich.text import Text

from fewshot.cli._common import ResultsOpt, console, err_console, frame_table, opt
from fewshot.types import FewshotError

__all__ = ["leaderboard_command"]


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
) -> None:
    """Rebuild leaderboard.csv and LEADERBOARD.md from the run records, in the results folder
    read (so two results folders never overwrite each other's tables) or --out."""
    from fewshot.leaderboard import build_leaderboard, write_leaderboard
    from fewshot.reported import default_reported_dir

    if not results.is_dir():
        raise FewshotError(f"No results folder {results}: run `fewshot run` first, or pass --results DIR.")
    if reported is None:
        beside = results.parent / "reported"
        reported = beside if beside.is_dir() else default_reported_dir()
    elif not reported.is_dir():
        raise FewshotError(f"--reported {reported} is not a folder of CSV files.")
    lb = build_leaderboard(results, reported)
    paths = write_leaderboard(lb, out if out is not None else results)
    if not lb.headline.empty:
        console.print(frame_table(lb.headline, "Headline numbers", ("Protocol", "Backbone", "Precision")))
    if not lb.failed.empty:
        err_console.print(Text(f"{len(lb.failed)} failed runs are listed in the Markdown.", style="yellow"))
    if not lb.conflicts.empty:
        err_console.print(
            Text("Some cells mix dataset, split, method or code versions: see Conflicts.", style="yellow")
        )
    console.print(f"Wrote {paths[1]} and {paths[0]} ({lb.n_records} records).", markup=False, soft_wrap=True)
