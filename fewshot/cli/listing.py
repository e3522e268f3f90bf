"""``fewshot list``: methods, datasets, backbones, suites and description sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

from fewshot.cli._common import DataRootOpt, ErrorGroup, console
from fewshot.types import FewshotError

__all__ = ["list_app"]

list_app = typer.Typer(
    cls=ErrorGroup,
    help="List methods, datasets, backbones, suites or description sets.",
    no_args_is_help=True,
)


@list_app.command("methods")
def list_methods() -> None:
    """Registered methods: origin (builtin / plugin / distribution), needs, novel classes."""
    from fewshot.methods import METHODS

    table = Table("Method", "Origin", "Distribution", "Needs", "Novel classes")
    for name in METHODS.names():
        try:
            origin = METHODS.origin(name)
            needs, novel = _method_facts(METHODS, name)
        except FewshotError as exc:
            table.add_row(name, "?", "", Text(f"cannot load: {exc}", style="red"), "")
            continue
        dist = f"{origin.distribution} {origin.version or ''}".strip() if origin.distribution else ""
        table.add_row(name, origin.kind, dist, needs, novel)
    console.print(table)


def _method_facts(methods: Any, name: str) -> tuple[str, str]:
    """(needs, novel classes) from the registration of a built-in, else from the class
    (importing a plugin is the only way to know it)."""
    summary = methods.summary(name)
    if "needs" in summary and "novel" in summary:
        return summary["needs"], summary["novel"]
    cls = methods.get(name)
    return cls.needs.value, "yes" if cls.supports_novel else "no"


@list_app.command("datasets")
def list_datasets(data_root: DataRootOpt = None) -> None:
    """Registered datasets, whether each is present under the data root, and how to get it."""
    from fewshot.datasets import DATASETS, SUITES, get_dataset

    table = Table("Dataset", "Suites", "Status", "How to get it")
    for name in DATASETS.names():
        suites = ", ".join(s for s, members in SUITES.items() if name in members)
        try:
            ds = get_dataset(name, data_root)
            present = ds.is_present()
            status = Text("present", style="green") if present else Text("missing", style="yellow")
            hint = "" if present else ds.fix_hint()
        except FewshotError as exc:
            status, hint = Text("error", style="red"), str(exc)
        table.add_row(name, suites, status, hint)
    console.print(table)
    suites_table(data_root)
    if data_root is None:
        console.print("Data root: not set (--data-root or $FEWSHOT_DATA); toy datasets need none.")
    else:
        console.print(f"Data root: {data_root}")


@list_app.command("backbones")
def list_backbones() -> None:
    """Known backbone ids (toy, then open_clip's ARCH:PRETRAINED pairs), one per line."""
    from fewshot.backbones import list_backbones as known

    for name in known():
        console.print(name, markup=False, soft_wrap=True)


@list_app.command("suites")
def list_suites(data_root: DataRootOpt = None) -> None:
    """Dataset suites, their members, and how many are present under the data root."""
    suites_table(data_root)


def suites_table(data_root: Path | None) -> None:
    from fewshot.datasets import SUITES, get_dataset

    table = Table("Suite", "Datasets", "Present")
    for name, members in SUITES.items():
        present = sum(get_dataset(member, data_root).is_present() for member in members)
        style = "green" if present == len(members) else "yellow"
        table.add_row(name, ", ".join(members), Text(f"{present}/{len(members)}", style=style))
    console.print(table)


@list_app.command("descriptions")
def list_descriptions(
    datasets: Annotated[
        list[str] | None,
        typer.Argument(help="Datasets to show (default: every dataset).", show_default=False),
    ] = None,
    data_root: DataRootOpt = None,
) -> None:
    """Description sets per dataset: name, kind, classes, sentences, content hash, source."""
    from fewshot.datasets import DATASETS, resolve_datasets
    from fewshot.descriptions.files import list_description_sets

    names = resolve_datasets(list(datasets)) if datasets else DATASETS.names()
    table = Table("Dataset", "Set")
    table.add_column("Kind", min_width=12)
    for column in ("Classes", "Sentences"):
        table.add_column(column, justify="right")
    table.add_column("Hash", min_width=16, no_wrap=True)
    table.add_column("Source")
    for name in names:
        for listed in list_description_sets(name, data_root):
            if listed.error:
                table.add_row(name, listed.name, "?", "", "", "", Text(listed.error, style="red"))
                continue
            row = (listed.kind, str(listed.classes), str(listed.sentences), listed.hash, listed.source)
            table.add_row(name, listed.name, *row)
    if table.row_count:
        console.print(table)
    else:
        console.print("No description sets found.")
    if data_root is None:
        console.print("No data root (--data-root or $FEWSHOT_DATA): only the toy world's built-in sets.")
    console.print(
        f"Sets live in {data_root or 'DATA_ROOT'}/descriptions/DATASET/NAME.json; get them with "
        "`fewshot data download descriptions` or `fewshot describe DATASET`. Kind 'any': a plain "
        "{class: [sentences]} file, read as the kind a method asks for.",
        soft_wrap=True,
    )
