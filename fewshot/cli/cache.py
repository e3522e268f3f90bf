"""``fewshot cache``: inspect or clear the feature cache."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from fewshot.cli._common import CacheDirOpt, ErrorGroup, console, opt
from fewshot.types import BackboneSpec, ConfigError

__all__ = ["cache_app"]

cache_app = typer.Typer(cls=ErrorGroup, help="Inspect or clear the feature cache.", no_args_is_help=True)
BackboneFilterOpt = Annotated[str | None, opt("--backbone", metavar="ID", help="Only this backbone.")]
DatasetFilterOpt = Annotated[str | None, opt("--dataset", metavar="NAME", help="Only this dataset.")]


def _matches(entry: dict[str, Any], backbone: str | None, dataset: str | None) -> bool:
    if dataset is not None and entry.get("dataset") != dataset:
        return False
    if backbone is None:
        return True
    try:
        wanted = BackboneSpec.parse(backbone).id
    except ConfigError:
        wanted = backbone
    return entry.get("backbone") in (backbone, wanted)


def _wanted_backbone(backbone: str | None) -> str | None:
    """The canonical id of a --backbone filter (as stage entries record it)."""
    if backbone is None:
        return None
    try:
        return BackboneSpec.parse(backbone).id
    except ConfigError:
        return backbone


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024:
            return f"{n:.0f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"


@cache_app.command("ls")
def cache_ls(
    cache_dir: CacheDirOpt = None, backbone: BackboneFilterOpt = None, dataset: DatasetFilterOpt = None
) -> None:
    """List cached feature entries (optionally of one backbone and/or dataset), and count
    the stage entries (fine-tuned models of methods such as gist)."""
    from fewshot.features import FeatureCache
    from fewshot.stages import StageCache

    cache = FeatureCache(cache_dir)
    entries = [e for e in cache.ls() if _matches(e, backbone, dataset)]
    table = Table("Backbone", "Dataset", "Images", "Dim", "View", "Size", "Created")
    for e in entries:
        view = "test" if e.get("view") is None else str(e["view"])
        table.add_row(
            str(e.get("backbone")),
            str(e.get("dataset")),
            str(e.get("n")),
            str(e.get("dim")),
            view,
            _size(float(e.get("size", 0))),
            str(e.get("created", "")),
        )
    console.print(table)
    total = sum(float(e.get("size", 0)) for e in entries)
    console.print(f"{len(entries)} entries, {_size(total)}, in {cache.root}", markup=False, soft_wrap=True)
    stages = [e for e in StageCache(cache.root).ls() if _matches(e, backbone, dataset)]
    if stages:
        methods = ", ".join(sorted({str(e["method"]) for e in stages}))
        size = _size(sum(float(e["size"]) for e in stages))
        console.print(
            f"{len(stages)} stage entries ({methods}: fine-tuned models, partial runs), {size}",
            markup=False,
            soft_wrap=True,
        )


@cache_app.command("clear")
def cache_clear(
    cache_dir: CacheDirOpt = None,
    backbone: BackboneFilterOpt = None,
    dataset: DatasetFilterOpt = None,
    yes: Annotated[bool, opt("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete cached features and stage entries (all, or of one backbone and/or dataset)."""
    from fewshot.features import FeatureCache
    from fewshot.stages import StageCache

    cache = FeatureCache(cache_dir)
    stages = StageCache(cache.root)
    count = sum(_matches(e, backbone, dataset) for e in cache.ls())
    count += sum(_matches(e, backbone, dataset) for e in stages.ls())
    what = " ".join(f for f in (backbone and f"backbone {backbone}", dataset and f"dataset {dataset}") if f)
    if count == 0:
        console.print(f"Nothing to clear in {cache.root}.", markup=False, soft_wrap=True)
        return
    if not yes:
        typer.confirm(
            f"Delete {count} cached entries{' of ' + what if what else ''} under {cache.root}?", abort=True
        )
    removed = cache.clear(backbone=backbone, dataset=dataset)
    wanted = _wanted_backbone(backbone)
    removed += stages.clear(backbone=wanted, dataset=dataset)
    console.print(f"Removed {removed} entries from {cache.root}.", markup=False, soft_wrap=True)
