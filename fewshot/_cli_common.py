"""What every ``fewshot`` sub-command shares: consoles, the error group, list options.

Kept apart from :mod:`fewshot.cli` so that sub-apps (:mod:`fewshot.cli_data`) can use it
without importing the main app (which mounts them).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import typer
from rich.console import Console
from rich.text import Text

from fewshot.types import FewshotError

__all__ = ["USER_ERROR_EXIT", "ErrorGroup", "console", "err_console", "print_error", "split_list"]

# Streams are looked up at print time, so CliRunner's captured streams are honoured.
console = Console(highlight=False)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

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
