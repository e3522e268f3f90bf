"""What every ``fewshot`` sub-command shares: consoles, the error group, option helpers,
the options several commands take, and the rich view of a DataFrame.

Kept apart from :mod:`fewshot.cli` (which mounts the sub-apps) so that every command module
can use it without importing the main app.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fewshot.types import FewshotError

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "USER_ERROR_EXIT",
    "CacheDirOpt",
    "DataRootOpt",
    "ErrorGroup",
    "ResultsOpt",
    "console",
    "err_console",
    "frame_table",
    "opt",
    "print_error",
    "split_list",
]

# Streams are looked up at print time, so CliRunner's captured streams are honoured.
console = Console(highlight=False, markup=False)  # data (paths, names) is never read as markup
err_console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)

USER_ERROR_EXIT = 2  # as click does for usage errors


def print_error(message: str) -> None:
    """One red ``Error: ...`` line on stderr."""
    err_console.print(Text.assemble(("Error: ", "bold red"), (message, "red")))


class ErrorGroup(typer.core.TyperGroup):
    """Turns a FewshotError raised anywhere below into one red line and exit code 2."""

    # ctx is Any: recent typer vendors its own click, older typer uses click's Context.
    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except FewshotError as exc:
            print_error(str(exc))
            raise typer.Exit(USER_ERROR_EXIT) from None


def split_list(values: Sequence[str] | None) -> list[str]:
    """Repeatable options that also take comma lists: ``-m a,b -m c`` -> [a, b, c]."""
    return [part.strip() for value in values or () for part in value.split(",") if part.strip()]


def opt(*names: str, help: str, **kw: Any) -> Any:
    """A typer option with its help; defaults are shown only where asked (``show_default``).

    Help strings are rich markup: a literal "[" is written "\\[".
    """
    return typer.Option(*names, help=help, show_default=kw.pop("show_default", False), **kw)


ResultsOpt = Annotated[
    Path,
    opt("--results", metavar="DIR", help="Folder of run records (one JSON per run).", show_default=True),
]
DataRootOpt = Annotated[
    Path | None, opt("--data-root", metavar="DIR", envvar="FEWSHOT_DATA", help="Dataset root (CoOp layout).")
]
CacheDirOpt = Annotated[
    Path | None,
    opt(
        "--cache-dir",
        metavar="DIR",
        envvar="FEWSHOT_CACHE",
        help="Feature cache. \\[default: user cache dir/fewshot]",
    ),
]


def frame_table(frame: pd.DataFrame, title: str, constant: Sequence[str] = ()) -> Table:
    """A rich view of a DataFrame: floats with 2 decimals, NaN as 'n/a', empty extra columns dropped.

    Columns named in ``constant`` that hold one value throughout move into the title, so
    that narrow terminals keep room for the columns that vary. Cells are plain text, never
    rich markup (a method variant such as ``coop[epochs=3]`` prints as it is).
    """
    # A label space the method cannot classify (e.g. novel classes for a linear probe) is
    # NaN: keep its column and show it as n/a rather than dropping or zeroing it.
    keep = {"accuracy", "base", "novel", "hm"}
    frame = frame[[c for c in frame.columns if c in keep or frame[c].notna().any()]]
    same = [c for c in constant if c in frame and frame[c].nunique() == 1]
    if same:
        title += " — " + ", ".join(f"{c} {frame[c].iloc[0]}" for c in same)
        frame = frame.drop(columns=same)
    table = Table(title=Text(title))
    for column in frame.columns:
        numeric = frame[column].dtype.kind in "fi"
        # fold, not ellipsis: a truncated dataset or method name is worse than a wrapped one.
        table.add_column(Text(str(column)), justify="right" if numeric else "left", overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(
            *(Text("n/a" if v != v else f"{v:.2f}" if isinstance(v, float) else str(v)) for v in row)
        )
    return table
