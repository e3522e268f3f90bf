"""The ``fewshot`` command line (typer + rich). Thin: every command delegates to the library.

Commands: ``run`` (:mod:`~fewshot.cli.run`: a sweep, or its plan with ``--dry-run``),
``list`` (:mod:`~fewshot.cli.listing`), ``leaderboard`` (:mod:`~fewshot.cli.leaderboard`),
``status`` (:mod:`~fewshot.cli.status`: done, failed, pending and running runs),
``cache`` (:mod:`~fewshot.cli.cache`), ``data`` (:mod:`~fewshot.cli.data`) and ``describe``
(:mod:`~fewshot.cli.describe`: description sets from an LLM). torch,
open_clip and pandas are imported inside the commands that need them, so ``fewshot --help``
stays fast.

Errors the user can cause are :class:`fewshot.types.FewshotError`; wherever one is raised
inside a command, it is printed as one red line (no traceback) and the exit code is 2.
A sweep with failed runs exits 1.
"""

import warnings
from typing import Annotated, Any

import typer
from rich.text import Text

import fewshot
from fewshot.cli._common import ErrorGroup, console, err_console
from fewshot.cli.cache import cache_app
from fewshot.cli.data import data_app
from fewshot.cli.describe import describe_command
from fewshot.cli.leaderboard import leaderboard_command
from fewshot.cli.listing import list_app
from fewshot.cli.run import run_command
from fewshot.cli.status import status_command

__all__ = ["app", "main"]

app = typer.Typer(
    cls=ErrorGroup,
    name="fewshot",
    help="Few-shot adaptation of CLIP-like models: run methods, build the leaderboard.",
    rich_markup_mode="rich",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_show_locals=False,
)
app.command("run")(run_command)
app.command("leaderboard")(leaderboard_command)
app.command("status")(status_command)
app.command("describe")(describe_command)
app.add_typer(list_app, name="list")
app.add_typer(cache_app, name="cache")
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        console.print(f"fewshot {fewshot.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """Few-shot adaptation of CLIP-like models: run methods, build the leaderboard."""


def _show_warning(message: Warning | str, category: type[Warning], *args: Any, **kwargs: Any) -> None:
    """Warnings print as one line through the CLI's console (no source line, no markup)."""
    text = " ".join(str(message).split())
    err_console.print(Text.assemble(("Warning: ", "bold yellow"), (text, "yellow")), soft_wrap=True)


def main() -> None:
    """Console entry point ``fewshot``."""
    warnings.showwarning = _show_warning
    app()
