"""``fewshot status RESULTS_DIR``: done, failed, pending and running runs per method and dataset.

Done and failed are read from the records; pending and running from the job states of the
Slurm sweeps that left a manifest in the folder (:mod:`fewshot.executors.status`). Cells are
plain text, never rich markup: a method variant or a failure reason prints as it is.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from fewshot.cli._common import USER_ERROR_EXIT, console, err_console, print_error

if TYPE_CHECKING:
    from fewshot.executors.status import RunState

__all__ = ["status_command"]

MAX_FAILURES = 20  # failure lines printed; the rest are counted

ResultsArg = Annotated[
    Path,
    typer.Argument(
        metavar="RESULTS_DIR", help="The results folder (`fewshot run --results`).", show_default=True
    ),
]


def status_command(results_dir: ResultsArg = Path("results/runs")) -> None:
    """Done, failed, pending and running runs per method and dataset, from the records and the
    job states of Slurm sweeps; then each failure with its reason and log."""
    from fewshot.executors.status import STATES, sweep_status

    if not results_dir.is_dir():
        print_error(
            f"{results_dir} is not a folder of run records: pass the folder `fewshot run --results` wrote."
        )
        raise typer.Exit(USER_ERROR_EXIT)
    status = sweep_status(results_dir)
    for note in status.notes:
        err_console.print(Text(note, style="yellow"))
    if not status.runs:
        console.print(Text(f"No runs in {results_dir}."))
        return
    counts = status.counts()
    table = Table(title=Text(f"Runs in {results_dir}"))
    for column in ("method", "dataset", *STATES):
        table.add_column(Text(column), justify="left" if column in ("method", "dataset") else "right")
    for (method, dataset), row in counts.items():
        table.add_row(Text(method), Text(dataset), *(Text(str(row[state])) for state in STATES))
    totals = {state: sum(row[state] for row in counts.values()) for state in STATES}
    table.add_row(
        Text("total", style="bold"), Text(""), *(Text(str(totals[s]), style="bold") for s in STATES)
    )
    console.print(table)
    _failures(status.runs)


def _failures(runs: list[RunState]) -> None:
    failed = [run for run in runs if run.state == "failed"]
    for run in failed[:MAX_FAILURES]:
        spec = run.spec
        to = f" -> {spec.target}" if spec.target else ""
        head = f"{spec.variant} {spec.dataset}{to} k{spec.shots} s{spec.seed}"
        console.print(Text(f"failed: {head}: {run.detail}"), soft_wrap=True)
    if len(failed) > MAX_FAILURES:
        console.print(
            Text(f"... and {len(failed) - MAX_FAILURES} more failed runs (`fewshot leaderboard` lists all).")
        )
