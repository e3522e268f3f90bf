"""``fewshot data``: get the benchmark datasets into the data root, in the CoOp layout.

``data_app`` is a typer sub-app, mounted on the main app with
``app.add_typer(data_app, name="data")``. Commands:

- ``download NAME... [--data-root DIR] [--mirror NAME=URL ...] [--force]``: download, verify and
  extract each dataset (:mod:`fewshot.datasets.download`), or print the exact manual steps
  where there is no public source. Every dataset is handled before the exit code is decided:
  0 when all are in place, 1 when some need manual steps or failed.
- ``download descriptions [--dataset NAME ...] [--data-root DIR] [--mirror descriptions=URL]
  [--force]``: the published LLM descriptions and synonyms (ProAPO's, DCLIP's, CuPL's), verified
  and stored as description sets (:mod:`fewshot.descriptions.published`); exit 1 if some failed.
- ``check [NAME...] [--data-root DIR] [--deep]``: per dataset, present and sound, missing, or
  wrong, with the fix (``Dataset.check``); exit 1 when a named dataset is missing or any
  present one is broken.
- ``sort-imagenet-val [--data-root DIR]``: move ImageNet's flat val images into wnid folders
  (labels from the devkit, through torchvision).

As in :mod:`fewshot.cli`, a :class:`~fewshot.types.FewshotError` (bad input) is printed as one
red line and exits with code 2. Heavy modules are imported inside the commands.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table
from rich.text import Text

from fewshot.cli._common import ErrorGroup, console, err_console, print_error, split_list
from fewshot.types import ConfigError

if TYPE_CHECKING:
    from fewshot.datasets.download import Outcome

__all__ = ["data_app", "parse_mirrors", "resolve_download_names"]

NOT_IN_PLACE_EXIT = 1  # some dataset needs manual steps, or failed
_error = print_error


data_app = typer.Typer(
    cls=ErrorGroup,
    help="Download the benchmark datasets into the data root (CoOp layout).",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@data_app.callback()
def _data() -> None:
    """Download the benchmark datasets into the data root (CoOp layout)."""


NamesArg = Annotated[
    list[str],
    typer.Argument(
        metavar="NAME...",
        help="Datasets or suites (e.g. oxford-pets dtd, or coop11); comma lists work too. "
        "`descriptions`: the published LLM descriptions (see --dataset).",
        show_default=False,
    ),
]
DataRootOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-root",
        metavar="DIR",
        envvar="FEWSHOT_DATA",
        help="Dataset root (CoOp layout).",
        show_default=False,
    ),
]
MirrorOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--mirror",
        metavar="NAME=URL",
        help="Fetch NAME's files from URL/<file name> instead (a local folder works); checksums are "
        "still verified. Repeatable. Also $FEWSHOT_MIRROR_<NAME>.",
        show_default=False,
    ),
]
ForceOpt = Annotated[
    bool,
    typer.Option(
        "--force",
        help="Install again even if present; what it replaces is moved to DATA_ROOT/.downloads/replaced/.",
    ),
]


_split = split_list


def resolve_download_names(names: Sequence[str]) -> list[str]:
    """Dataset keys for ``names`` (suites expanded, order kept, repeats dropped).

    Unknown names are one ConfigError that lists the valid ones.
    """
    from fewshot.datasets import SUITES
    from fewshot.datasets.download import RECIPES

    suites = {s: m for s, m in SUITES.items() if m and all(k in RECIPES for k in m)}
    keys: list[str] = []
    unknown: list[str] = []
    for name in _split(names):
        members = suites.get(name, (name,))
        if not all(m in RECIPES for m in members):
            unknown.append(name)
        keys.extend(m for m in members if m not in keys)
    if unknown:
        valid = [*RECIPES, *suites]
        close = [c for n in unknown for c in difflib.get_close_matches(n, valid, n=1)]
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        suite_text = f"; suites: {', '.join(suites)}" if suites else ""
        raise ConfigError(
            f"Unknown dataset {', '.join(map(repr, unknown))}.{hint} "
            f"Datasets: {', '.join(RECIPES)}{suite_text}."
        )
    if not keys:
        raise ConfigError("No dataset given: name at least one, e.g. `fewshot data download oxford-pets`.")
    return keys


def parse_mirrors(items: Sequence[str]) -> dict[str, str]:
    """``NAME=URL`` options -> {dataset key: base URL}; bad items are a ConfigError."""
    from fewshot.datasets.download import RECIPES

    mirrors: dict[str, str] = {}
    for item in items:
        name, sep, url = (part.strip() for part in item.partition("="))
        if not sep or not name or not url:
            raise ConfigError(
                f"Bad --mirror {item!r}: write NAME=URL, e.g. --mirror eurosat=https://host/dir."
            )
        if name not in RECIPES:
            raise ConfigError(f"--mirror {item!r}: unknown dataset {name!r}. Datasets: {', '.join(RECIPES)}.")
        mirrors[name] = url
    return mirrors


def _report(outcome: Outcome) -> None:
    styles = {"installed": "green", "present": "green", "manual": "yellow", "failed": "red"}
    head = Text.assemble((f"{outcome.key}: ", "bold"), (outcome.status, styles.get(outcome.status, "")))
    if outcome.status == "manual":
        console.print(head)
        console.print(outcome.message, markup=False, soft_wrap=True)
    else:
        (err_console if outcome.status == "failed" else console).print(head, Text(outcome.message))
    for note in outcome.notes:
        console.print(Text(f"  note: {note}", style="dim"), soft_wrap=True)


def _summary(outcomes: list[Outcome], root: Path) -> Table:
    from fewshot.datasets.download import RECIPES

    table = Table("Dataset", "Folder", "Status", title=f"Datasets under {root}")
    for o in outcomes:
        style = "green" if o.ok else "yellow" if o.status == "manual" else "red"
        table.add_row(o.key, RECIPES[o.key].folder, Text(o.status, style=style))
    return table


DescDatasetOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--dataset",
        metavar="NAME",
        help="With `descriptions`: only these datasets' files (repeatable, comma lists work).",
        show_default=False,
    ),
]


@data_app.command("download")
def download_command(
    names: NamesArg,
    data_root: DataRootOpt = None,
    mirror: MirrorOpt = None,
    force: ForceOpt = False,
    dataset: DescDatasetOpt = None,
) -> None:
    """Download, verify and extract datasets; print the manual steps where there is no public source.

    Interrupted downloads resume where they stopped when the command is run again.
    `fewshot data download descriptions` fetches the published LLM descriptions and synonyms.
    """
    from fewshot.datasets.download import download_dataset

    if data_root is None:
        raise ConfigError("No data root: pass --data-root DIR or set $FEWSHOT_DATA.")
    if _split(names) == ["descriptions"]:
        download_descriptions_command(data_root, _split(dataset), mirror or [], force)
        return
    if dataset:
        raise ConfigError("--dataset goes with `fewshot data download descriptions` only.")
    keys = resolve_download_names(names)
    mirrors = parse_mirrors(mirror or [])
    data_root.mkdir(parents=True, exist_ok=True)
    outcomes = []
    for key in keys:
        outcome = download_dataset(key, data_root, mirrors=mirrors, force=force, console=err_console)
        _report(outcome)
        outcomes.append(outcome)
    console.print(_summary(outcomes, data_root))
    pending = [o for o in outcomes if not o.ok]
    if pending:
        listed = ", ".join(f"{o.key} ({o.status})" for o in pending)
        _error(
            f"{len(pending)} of {len(outcomes)} datasets are not in place: {listed}. Follow the steps "
            "printed above, then run the command again."
        )
        raise typer.Exit(NOT_IN_PLACE_EXIT)


def download_descriptions_command(
    data_root: Path, datasets: list[str], mirrors: list[str], force: bool
) -> None:
    """``fewshot data download descriptions``: fetch, verify and store the published files."""
    from fewshot.descriptions.published import MIRROR_KEY, download_descriptions, select_files

    mirror = None
    for item in mirrors:
        name, sep, url = (part.strip() for part in item.partition("="))
        if name != MIRROR_KEY or not sep or not url:
            raise ConfigError(f"Bad --mirror {item!r} for descriptions: write --mirror {MIRROR_KEY}=URL.")
        mirror = url
    files = select_files(datasets)
    data_root.mkdir(parents=True, exist_ok=True)
    outcomes = download_descriptions(data_root, files, mirror=mirror, force=force, console=err_console)
    table = Table("Dataset", "Set", "Source", "Status", title=f"Description sets under {data_root}")
    for o in outcomes:
        style = "green" if o.ok else "red"
        (err_console if not o.ok else console).print(
            Text.assemble((f"{o.file.dataset}/{o.file.name}: ", "bold"), (o.status, style), f" {o.message}")
        )
        table.add_row(o.file.dataset, o.file.name, o.file.repository, Text(o.status, style=style))
    console.print(table)
    console.print(
        "These texts state no licence: they are fetched from the authors' repositories for your own "
        "use and are not part of fewshot.",
        soft_wrap=True,
    )
    failed = [o for o in outcomes if not o.ok]
    if failed:
        _error(f"{len(failed)} of {len(outcomes)} files failed (see above); run the command again to retry.")
        raise typer.Exit(NOT_IN_PLACE_EXIT)


CheckNamesArg = Annotated[
    list[str] | None,
    typer.Argument(
        metavar="[NAME...]",
        help="Datasets or suites to check (default: every dataset with files).",
        show_default=False,
    ),
]
DeepOpt = Annotated[bool, typer.Option("--deep", help="Also decode every image (slow on big datasets).")]


@data_app.command("check")
def check_command(names: CheckNamesArg = None, data_root: DataRootOpt = None, deep: DeepOpt = False) -> None:
    """Report per dataset: present and sound, missing, or wrong (each problem names the file and the fix).

    Reads each dataset's splits and looks at every image file once. Exits 1 if a dataset
    named on the command line is missing, or any present dataset has a problem.
    """
    from fewshot.datasets import DATASETS, get_dataset, resolve_datasets

    if data_root is None:
        raise ConfigError("No data root: pass --data-root DIR or set $FEWSHOT_DATA.")
    named = bool(names)
    keys = (
        resolve_datasets(_split(names or []))
        if named
        else [n for n in DATASETS.names() if DATASETS.get(n).download != "none"]
    )
    table = Table("Dataset", "Folder", "Status", "Fix", title=f"Datasets under {data_root}")
    bad = 0
    for key in keys:
        dataset = get_dataset(key, data_root)
        if dataset.download == "none":
            table.add_row(key, "", Text("generated", style="green"), "")
            continue
        if not dataset.is_present():
            bad += named
            table.add_row(key, dataset.folder, Text("missing", style="yellow"), dataset.fix_hint())
            continue
        with err_console.status(f"checking {key} ..."):
            problems = dataset.check(deep=deep)
        if problems:
            bad += 1
            table.add_row(key, dataset.folder, Text(f"{len(problems)} problem(s)", style="red"), problems[0])
            for problem in problems:
                err_console.print(Text(f"  {key}: {problem}", style="red"), soft_wrap=True)
        else:
            table.add_row(key, dataset.folder, Text("ok", style="green"), "")
    console.print(table)
    if bad:
        _error(f"{bad} dataset(s) missing or broken; the table and the lines above say how to fix each.")
        raise typer.Exit(NOT_IN_PLACE_EXIT)


@data_app.command("sort-imagenet-val")
def sort_imagenet_val_command(data_root: DataRootOpt = None) -> None:
    """Sort ImageNet's flat validation images into class folders, with the devkit's labels.

    Needs DATA_ROOT/imagenet/images/val/ILSVRC2012_val_*.JPEG (the extracted val tar) and
    ILSVRC2012_devkit_t12.tar.gz in DATA_ROOT/imagenet/images/. Safe to rerun.
    """
    from fewshot.datasets import get_dataset
    from fewshot.datasets.imagenet import sort_val_images

    if data_root is None:
        raise ConfigError("No data root: pass --data-root DIR or set $FEWSHOT_DATA.")
    images = get_dataset("imagenet", data_root).path / "images"
    moved, left = sort_val_images(images)
    console.print(f"Moved {moved} validation images into class folders under {images / 'val'}.")
    if left:
        _error(
            f"{left} image files still lie directly in {images / 'val'}: they are not official val images."
        )
        raise typer.Exit(NOT_IN_PLACE_EXIT)
