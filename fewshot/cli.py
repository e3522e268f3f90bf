"""The ``fewshot`` command line (typer + rich). Thin: every command delegates to the library.

Commands: ``run`` (a sweep), ``list`` (methods, datasets, backbones, suites), ``leaderboard``,
``cache`` (ls, clear) and ``data`` (download, check; :mod:`fewshot.cli_data`). torch,
open_clip and pandas are imported inside the commands that need them, so ``fewshot --help``
stays fast.

Errors the user can cause are :class:`fewshot.types.FewshotError`; wherever one is raised
inside a command, it is printed as one red line (no traceback) and the exit code is 2.
A sweep with failed runs exits 1.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table
from rich.text import Text

import fewshot
from fewshot._cli_common import USER_ERROR_EXIT, ErrorGroup, console, err_console, print_error, split_list
from fewshot.cli_data import data_app
from fewshot.types import PROTOCOLS, TRANSFER_PROTOCOLS, BackboneSpec, ConfigError, FewshotError, RunSpec

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["app", "main"]

DEFAULT_METHODS = "zeroshot,linear-probe,coop"
TOY_NOTICE = (
    "No dataset given and $FEWSHOT_DATA unset: running the toy suite on {backbone}. "
    "Use --suite coop11 --backbone ViT-B-16:openai --data-root DIR for the real benchmark."
)
FAILED_RUNS_EXIT = 1
_error = print_error
_Group = ErrorGroup


_SETTINGS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    cls=_Group,
    name="fewshot",
    help="Few-shot adaptation of CLIP-like models: run methods, build the leaderboard.",
    rich_markup_mode="rich",
    context_settings=_SETTINGS,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
list_app = typer.Typer(cls=_Group, help="List methods, datasets, backbones or suites.", no_args_is_help=True)
cache_app = typer.Typer(cls=_Group, help="Inspect or clear the feature cache.", no_args_is_help=True)
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


# ------------------------------------------------------------------------------------------
# Options, declared once with their help (shared between commands where they recur).
# Help strings are rich markup: a literal "[" is written "\\[".


def _opt(*names: str, help: str, **kw: Any) -> Any:
    return typer.Option(*names, help=help, show_default=kw.pop("show_default", False), **kw)


MethodOpt = Annotated[
    list[str] | None,
    _opt(
        "--method",
        "-m",
        metavar="NAME",
        help=f"Method(s); repeat or comma-separate. \\[default: {DEFAULT_METHODS}]",
    ),
]
DatasetOpt = Annotated[
    list[str] | None,
    _opt("--dataset", "-d", metavar="NAME", help="Dataset(s) or suite(s); repeat or comma-separate."),
]
SuiteOpt = Annotated[list[str] | None, _opt("--suite", metavar="NAME", help="Suite(s), e.g. toy or coop11.")]
ShotsOpt = Annotated[
    list[str], _opt("--shots", metavar="K,...", help="Shots per class, e.g. 1,2,4,8,16.", show_default=True)
]
SeedsOpt = Annotated[
    list[str], _opt("--seeds", metavar="S,...", help="Seeds, e.g. 1,2,3.", show_default=True)
]
BackboneOpt = Annotated[
    str,
    _opt(
        "--backbone",
        metavar="ID",
        help="toy, ARCH:PRETRAINED (ViT-B-16:openai) or hf-hub:ORG/NAME.",
        show_default=True,
    ),
]
ProtocolOpt = Annotated[
    str, _opt("--protocol", metavar="NAME", help=", ".join(PROTOCOLS) + ".", show_default=True)
]
SourceOpt = Annotated[
    str | None,
    _opt(
        "--source",
        metavar="NAME",
        help="cross-dataset / domain-generalization: the dataset to train on "
        "(default: imagenet for coop11, toy-objects for toy; see docs/cli.md).",
    ),
]
DeviceOpt = Annotated[
    str,
    _opt(
        "--device",
        metavar="DEVICE",
        help="auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps.",
        show_default=True,
    ),
]
AugViewsOpt = Annotated[
    str,
    _opt(
        "--aug-views",
        metavar="N|online",
        help="Cached augmented views per support image, or online.",
        show_default=True,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    _opt(
        "--set",
        metavar="KEY=VALUE",
        help="Config override for every method, or METHOD.key=value; repeatable.",
    ),
]
ResultsOpt = Annotated[
    Path,
    _opt("--results", metavar="DIR", help="Folder of run records (one JSON per run).", show_default=True),
]
DataRootOpt = Annotated[
    Path | None, _opt("--data-root", metavar="DIR", envvar="FEWSHOT_DATA", help="Dataset root (CoOp layout).")
]
CacheDirOpt = Annotated[
    Path | None,
    _opt(
        "--cache-dir",
        metavar="DIR",
        envvar="FEWSHOT_CACHE",
        help="Feature cache. \\[default: user cache dir/fewshot]",
    ),
]
BackboneFilterOpt = Annotated[str | None, _opt("--backbone", metavar="ID", help="Only this backbone.")]
DatasetFilterOpt = Annotated[str | None, _opt("--dataset", metavar="NAME", help="Only this dataset.")]


# ------------------------------------------------------------------------------------------
# fewshot run


_split = split_list


def _ints(values: Sequence[str], option: str, minimum: int) -> list[int]:
    out = []
    for text in _split(values):
        try:
            number = int(text)
        except ValueError:
            number = minimum - 1
        if number < minimum:
            kind = "positive integers" if minimum > 0 else "integers >= 0"
            raise ConfigError(f"{option} takes {kind} (comma-separated), got {text!r}.")
        out.append(number)
    if not out:
        raise ConfigError(f"{option} needs at least one value.")
    return list(dict.fromkeys(out))


@dataclass
class _Plan:
    """The validated inputs of ``fewshot run``; ``problems`` holds one line per bad input."""

    methods: list[str] = field(default_factory=list)
    datasets: list[str] = field(default_factory=list)
    shots: list[int] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    backbone: str = "toy"
    protocol: str = "fewshot"
    aug_views: int = 10
    targets: tuple[str, ...] = ()  # cross-dataset / domain-generalization: datasets[0] is the source
    overrides: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def check(self, fn: Any, *args: Any) -> Any:
        """Call ``fn``; record a ConfigError as a problem instead of raising it."""
        try:
            return fn(*args)
        except ConfigError as exc:
            self.problems.append(str(exc))
            return None

    def specs(self, device: str) -> list[RunSpec]:
        """The grid: methods x datasets x shots x seeds (x source and targets), in that order."""
        targets = ("", *self.targets) if self.targets else ("",)
        return [
            RunSpec(
                m,
                d,
                shots=k,
                seed=s,
                protocol=self.protocol,
                backbone=self.backbone,
                overrides=self.overrides[m],
                aug_views=self.aug_views,
                target=t,
                device=device,
            )
            for m in self.methods
            for d in self.datasets
            for k in self.shots
            for s in self.seeds
            for t in targets
        ]


def _check_methods(names: list[str]) -> list[str]:
    from fewshot.methods import get_method

    for name in names:
        get_method(name)
    return names


def _parse_sets(items: list[str], methods: list[str]) -> dict[str, list[tuple[str, str]]]:
    """``key=value`` (every method) or ``METHOD.key=value`` (one method) -> per-method pairs."""
    per_method: dict[str, list[tuple[str, str]]] = {m: [] for m in methods}
    for item in items:
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"Bad --set {item!r}: write key=value (e.g. --set n_ctx=4), or METHOD.key=value."
            )
        scope, dot, name = key.rpartition(".")
        targets = [scope] if dot and scope in per_method else methods
        for method in targets:
            per_method[method].append((name if dot and scope in per_method else key, value.strip()))
    return per_method


def _check_sets(items: list[str], methods: list[str], protocol: str, shots: int) -> dict[str, Any]:
    from fewshot.methods import get_method

    per_method = _parse_sets(items, methods)
    for method, pairs in per_method.items():
        try:
            get_method(method).config_cls.build(protocol, shots, dict(pairs))
        except ConfigError as exc:
            hint = " Scope a setting to one method with --set METHOD.key=value." if len(methods) > 1 else ""
            raise ConfigError(f"--set for {method}: {exc}{hint}") from None
    return {m: tuple(sorted(p)) for m, p in per_method.items()}


def _check_protocol(protocol: str) -> str:
    if protocol not in PROTOCOLS:
        import difflib

        close = difflib.get_close_matches(protocol, PROTOCOLS, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(f"Unknown protocol {protocol!r}.{hint} Protocols: {', '.join(PROTOCOLS)}.")
    return protocol


def _check_aug_views(text: str) -> int:
    if text.strip().lower() == "online":
        return 0
    try:
        views = int(text)
    except ValueError:
        views = -1
    if views < 0:
        raise ConfigError(f"--aug-views takes an integer >= 0 or 'online', got {text!r}.")
    return views


def _resolve_device(device: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"Bad --device {device!r}: use auto, cpu, cuda, cuda:N or mps.")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _plan_run(methods: list[str], names: list[str], opts: dict[str, Any], data_root: Path | None) -> _Plan:
    """Validate every input before anything runs; collect one line per problem."""
    from fewshot.datasets import resolve_datasets
    from fewshot.protocols import transfer_plan

    plan = _Plan()
    if not names and data_root is not None:
        plan.problems.append("No dataset given: pass --dataset NAME or --suite NAME (`fewshot list suites`).")
    plan.methods = plan.check(_check_methods, methods) or []
    plan.protocol = plan.check(_check_protocol, opts["protocol"]) or ""
    if plan.protocol in TRANSFER_PROTOCOLS:
        transfer = plan.check(transfer_plan, plan.protocol, names or ["toy"], opts["source"])
        plan.datasets, plan.targets = ([transfer[0]], transfer[1]) if transfer else ([], ())
    elif opts["source"]:
        plan.problems.append("--source applies to --protocol cross-dataset or domain-generalization only.")
    else:
        plan.datasets = plan.check(resolve_datasets, names or ["toy"]) or []
    plan.shots = plan.check(_ints, opts["shots"], "--shots", 1) or []
    plan.seeds = plan.check(_ints, opts["seeds"], "--seeds", 0) or []
    spec = plan.check(BackboneSpec.parse, opts["backbone"])
    plan.backbone = spec.id if spec else ""
    plan.aug_views = plan.check(_check_aug_views, opts["aug_views"]) or 0
    if plan.methods and plan.protocol and plan.shots:
        plan.overrides = (
            plan.check(_check_sets, opts["sets"], plan.methods, plan.protocol, plan.shots[0]) or {}
        )
    return plan


@app.command("run")
def run_command(
    method: MethodOpt = None,
    dataset: DatasetOpt = None,
    suite: SuiteOpt = None,
    shots: ShotsOpt = ["16"],  # noqa: B006 (typer reads, never mutates, the default)
    seeds: SeedsOpt = ["1,2,3"],  # noqa: B006
    backbone: BackboneOpt = "toy",
    protocol: ProtocolOpt = "fewshot",
    source: SourceOpt = None,
    device: DeviceOpt = "auto",
    results: ResultsOpt = Path("results/runs"),
    aug_views: AugViewsOpt = "10",
    set_: SetOpt = None,
    data_root: DataRootOpt = None,
    cache_dir: CacheDirOpt = None,
) -> None:
    """Run methods x datasets x shots x seeds; one record per run; a summary at the end.

    Runs already recorded (same spec) are skipped, so an interrupted sweep resumes. With
    --protocol cross-dataset or domain-generalization, each method is fitted once on the
    source and scored on it and on every target: one record each.
    """
    names = _split(dataset) + _split(suite)
    opts = {
        "shots": shots,
        "seeds": seeds,
        "backbone": backbone,
        "protocol": protocol,
        "source": source,
        "aug_views": aug_views,
        "sets": list(set_ or []),
    }
    plan = _plan_run(_split(method) or _split([DEFAULT_METHODS]), names, opts, data_root)
    run_device = plan.check(_resolve_device, device)
    if plan.problems:
        for problem in plan.problems:
            _error(problem)
        raise typer.Exit(USER_ERROR_EXIT)
    if not names:
        where = "the bundled toy backbone" if plan.backbone == "toy" else f"backbone {plan.backbone}"
        err_console.print(Text(TOY_NOTICE.format(backbone=where), style="yellow"))
    _sweep(plan.specs(run_device), results, data_root, cache_dir)


def _sweep(specs: list[RunSpec], results: Path, data_root: Path | None, cache_dir: Path | None) -> None:
    from fewshot.features import FeatureCache
    from fewshot.leaderboard import summary_table
    from fewshot.runner import sweep

    outcomes = sweep(
        specs, results_dir=results, data_root=data_root, cache=FeatureCache(cache_dir), console=console
    )
    if outcomes:
        console.print(
            _frame_table(summary_table(outcomes), "Summary (mean over seeds)", ("backbone", "protocol"))
        )
    failed = [r for r in outcomes if not r.ok]
    if failed:
        where = failed[0].spec.record_path(results)
        _error(
            f"{len(failed)} of {len(outcomes)} runs failed. Their failure records (with the reason) are "
            f"under {results}, e.g. {where}; `fewshot leaderboard` lists them all."
        )
        raise typer.Exit(FAILED_RUNS_EXIT)
    console.print(
        f"Records in {results}. Next: fewshot leaderboard --results {results}", markup=False, soft_wrap=True
    )


def _frame_table(frame: "pd.DataFrame", title: str, constant: Sequence[str] = ()) -> Table:
    """A rich view of a DataFrame: floats with 2 decimals, NaN as 'n/a', empty extra columns dropped.

    Columns named in ``constant`` that hold one value throughout move into the title, so
    that narrow terminals keep room for the columns that vary.
    """
    # A label space the method cannot classify (e.g. novel classes for a linear probe) is
    # NaN: keep its column and show it as n/a rather than dropping or zeroing it.
    keep = {"accuracy", "base", "novel", "hm"}
    frame = frame[[c for c in frame.columns if c in keep or frame[c].notna().any()]]
    same = [c for c in constant if c in frame and frame[c].nunique() == 1]
    if same:
        title += " — " + ", ".join(f"{c} {frame[c].iloc[0]}" for c in same)
        frame = frame.drop(columns=same)
    table = Table(title=title)
    for column in frame.columns:
        numeric = frame[column].dtype.kind in "fi"
        # fold, not ellipsis: a truncated dataset or method name is worse than a wrapped one.
        table.add_column(str(column), justify="right" if numeric else "left", overflow="fold")
    for row in frame.itertuples(index=False):
        table.add_row(*("n/a" if v != v else f"{v:.2f}" if isinstance(v, float) else str(v) for v in row))
    return table


# ------------------------------------------------------------------------------------------
# fewshot list


@list_app.command("methods")
def list_methods() -> None:
    """Registered methods: origin (builtin / plugin / distribution), needs, novel classes."""
    from fewshot.methods import METHODS

    table = Table("Method", "Origin", "Distribution", "Needs", "Novel classes")
    for name in METHODS.names():
        try:
            cls = METHODS.get(name)
            origin = METHODS.origin(name)
        except FewshotError as exc:
            table.add_row(name, "?", "", Text(f"cannot load: {exc}", style="red"), "")
            continue
        dist = f"{origin.distribution} {origin.version or ''}".strip() if origin.distribution else ""
        table.add_row(name, origin.kind, dist, cls.needs.value, "yes" if cls.supports_novel else "no")
    console.print(table)


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
    _suites_table(data_root)
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
    _suites_table(data_root)


def _suites_table(data_root: Path | None) -> None:
    from fewshot.datasets import SUITES, get_dataset

    table = Table("Suite", "Datasets", "Present")
    for name, members in SUITES.items():
        present = sum(get_dataset(member, data_root).is_present() for member in members)
        style = "green" if present == len(members) else "yellow"
        table.add_row(name, ", ".join(members), Text(f"{present}/{len(members)}", style=style))
    console.print(table)


# ------------------------------------------------------------------------------------------
# fewshot leaderboard


@app.command("leaderboard")
def leaderboard_command(
    results: ResultsOpt = Path("results/runs"),
    reported: Annotated[
        Path | None,
        _opt(
            "--reported",
            metavar="DIR",
            help="Published numbers (*.csv). \\[default: RESULTS/../reported if present]",
        ),
    ] = None,
    out: Annotated[
        Path | None, _opt("--out", metavar="DIR", help="Where to write the files. \\[default: RESULTS/..]")
    ] = None,
) -> None:
    """Rebuild leaderboard.csv and LEADERBOARD.md from the run records."""
    from fewshot.leaderboard import build_leaderboard, write_leaderboard

    if not results.is_dir():
        raise FewshotError(f"No results folder {results}: run `fewshot run` first, or pass --results DIR.")
    if reported is None and (results.parent / "reported").is_dir():
        reported = results.parent / "reported"
    elif reported is not None and not reported.is_dir():
        raise FewshotError(f"--reported {reported} is not a folder of CSV files.")
    lb = build_leaderboard(results, reported)
    paths = write_leaderboard(lb, out if out is not None else results.parent)
    if not lb.headline.empty:
        console.print(_frame_table(lb.headline, "Headline numbers", ("Protocol", "Backbone")))
    if not lb.failed.empty:
        err_console.print(Text(f"{len(lb.failed)} failed runs are listed in the Markdown.", style="yellow"))
    if not lb.conflicts.empty:
        err_console.print(
            Text("Some cells mix dataset/split/method versions: see Conflicts.", style="yellow")
        )
    console.print(f"Wrote {paths[1]} and {paths[0]} ({lb.n_records} records).", markup=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------
# fewshot cache


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
    """List cached feature entries (optionally of one backbone and/or dataset)."""
    from fewshot.features import FeatureCache

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


@cache_app.command("clear")
def cache_clear(
    cache_dir: CacheDirOpt = None,
    backbone: BackboneFilterOpt = None,
    dataset: DatasetFilterOpt = None,
    yes: Annotated[bool, _opt("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Delete cached features (all, or of one backbone and/or dataset)."""
    from fewshot.features import FeatureCache

    cache = FeatureCache(cache_dir)
    count = sum(_matches(e, backbone, dataset) for e in cache.ls())
    what = " ".join(f for f in (backbone and f"backbone {backbone}", dataset and f"dataset {dataset}") if f)
    if count == 0:
        console.print(f"Nothing to clear in {cache.root}.", markup=False, soft_wrap=True)
        return
    if not yes:
        typer.confirm(
            f"Delete {count} cached entries{' of ' + what if what else ''} under {cache.root}?", abort=True
        )
    removed = cache.clear(backbone=backbone, dataset=dataset)
    console.print(f"Removed {removed} entries from {cache.root}.", markup=False, soft_wrap=True)


def main() -> None:
    """Console entry point ``fewshot``."""
    app()


if __name__ == "__main__":
    main()
