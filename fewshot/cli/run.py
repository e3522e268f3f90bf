"""``fewshot run``: options in, one validated plan, a sweep (or, with ``--dry-run``, the plan).

The command only translates its options into :meth:`fewshot.planning.SweepPlan.from_options`,
the builder the Python API uses too; every input is checked there before anything runs.
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.text import Text

from fewshot.cli._common import (
    USER_ERROR_EXIT,
    CacheDirOpt,
    DataRootOpt,
    ResultsOpt,
    console,
    err_console,
    frame_table,
    opt,
    print_error,
    split_list,
)
from fewshot.planning import DEFAULT_METHODS, PlanError, SweepPlan
from fewshot.precision import PRECISIONS
from fewshot.types import PROTOCOLS

if TYPE_CHECKING:
    from fewshot.executors import Executor
    from fewshot.features import FeatureCache
    from fewshot.planning import PlannedFit
    from fewshot.types import RunSpec
    from fewshot.workload import Work

__all__ = ["run_command"]

FAILED_RUNS_EXIT = 1
INTERRUPTED_EXIT = 130  # as a shell reports a command ended by Ctrl-C
TOY_NOTICE = (
    "No dataset given and $FEWSHOT_DATA unset: running the toy suite on {backbone}. "
    "Use --suite coop11 --backbone ViT-B-16:openai --data-root DIR for the real benchmark."
)

MethodOpt = Annotated[
    list[str] | None,
    opt(
        "--method",
        "-m",
        metavar="NAME",
        help=f"Method(s); repeat or comma-separate. \\[default: {','.join(DEFAULT_METHODS)}]",
    ),
]
DatasetOpt = Annotated[
    list[str] | None,
    opt("--dataset", "-d", metavar="NAME", help="Dataset(s) or suite(s); repeat or comma-separate."),
]
SuiteOpt = Annotated[list[str] | None, opt("--suite", metavar="NAME", help="Suite(s), e.g. toy or coop11.")]
ShotsOpt = Annotated[
    list[str], opt("--shots", metavar="K,...", help="Shots per class, e.g. 1,2,4,8,16.", show_default=True)
]
SeedsOpt = Annotated[list[str], opt("--seeds", metavar="S,...", help="Seeds, e.g. 1,2,3.", show_default=True)]
BackboneOpt = Annotated[
    str,
    opt(
        "--backbone",
        metavar="ID",
        help="toy, ARCH:PRETRAINED (ViT-B-16:openai) or hf-hub:ORG/NAME.",
        show_default=True,
    ),
]
ProtocolOpt = Annotated[
    str, opt("--protocol", metavar="NAME", help=", ".join(PROTOCOLS) + ".", show_default=True)
]
SourceOpt = Annotated[
    str | None,
    opt(
        "--source",
        metavar="NAME",
        help="cross-dataset / domain-generalization: the dataset to train on "
        "(default: imagenet for coop11, toy-objects for toy; see docs/cli.md).",
    ),
]
DeviceOpt = Annotated[
    str,
    opt(
        "--device",
        metavar="DEVICE",
        help="auto (cuda if available, else cpu), cpu, cuda, cuda:N, mps.",
        show_default=True,
    ),
]
PrecisionOpt = Annotated[
    str,
    opt(
        "--precision",
        metavar="|".join(PRECISIONS),
        help="auto: fp32 on CPU, fp16 autocast on CUDA (as the official code); recorded with each run.",
        show_default=True,
    ),
]
AugViewsOpt = Annotated[
    str,
    opt(
        "--aug-views",
        metavar="N|online",
        help="Cached augmented views per support image, or online.",
        show_default=True,
    ),
]
SetOpt = Annotated[
    list[str] | None,
    opt(
        "--set",
        metavar="KEY=VALUE",
        help="Config override for every method, or METHOD.key=value; repeatable.",
    ),
]
ForceOpt = Annotated[
    bool,
    opt(
        "--force", help="Rerun every selected run, even those recorded (old records go to RESULTS/.history/)."
    ),
]
NoRerunStaleOpt = Annotated[
    bool,
    opt(
        "--no-rerun-stale",
        help="Keep records made by other code (a changed method) or with changed description sets "
        "instead of rerunning them.",
    ),
]
NoCacheOpt = Annotated[
    bool,
    opt("--no-cache", help="Compute features in a temporary folder, removed at the end (no cache kept)."),
]
EXECUTORS_PANEL = "Executors (where the fits run)"
# The options of --executor ray and slurm, as run_command names its parameters.
EXECUTOR_OPTIONS = (
    "address",
    "gpus_per_run",
    "cpus_per_run",
    "slurm_partition",
    "slurm_time",
    "slurm_array_parallelism",
    "slurm_opt",
    "slurm_folder",
)
ExecutorOpt = Annotated[
    str,
    opt(
        "--executor",
        metavar="local|ray|slurm",
        help="local: in this process, one fit after the other; ray: each fit a Ray task; slurm: one "
        "job array per sweep. With ray or slurm, workers read and write --results, --cache-dir and "
        "--data-root themselves: give paths every worker sees (a shared filesystem).",
        show_default=True,
        rich_help_panel=EXECUTORS_PANEL,
    ),
]
AddressOpt = Annotated[
    str | None,
    opt(
        "--address",
        metavar="auto|ray://HOST:PORT",
        help="ray: the cluster to join. \\[default: a Ray started on this machine, or $RAY_ADDRESS]",
        rich_help_panel=EXECUTORS_PANEL,
    ),
]
GpusPerRunOpt = Annotated[
    int | None,
    opt(
        "--gpus-per-run",
        metavar="N",
        help="ray, slurm: GPUs per fit; with --device auto, N >= 1 runs on cuda. "
        "\\[default: 1 with --device cuda, else 0]",
        rich_help_panel=EXECUTORS_PANEL,
    ),
]
CpusPerRunOpt = Annotated[
    int | None,
    opt(
        "--cpus-per-run",
        metavar="N",
        help="ray, slurm: CPUs per fit. \\[default: 1]",
        rich_help_panel=EXECUTORS_PANEL,
    ),
]
SlurmPartitionOpt = Annotated[
    str | None,
    opt("--slurm-partition", metavar="NAME", help="slurm: the partition.", rich_help_panel=EXECUTORS_PANEL),
]
SlurmTimeOpt = Annotated[
    int | None,
    opt(
        "--slurm-time",
        metavar="MINUTES",
        help="slurm: time limit of each job, in minutes. \\[default: 240]",
        rich_help_panel=EXECUTORS_PANEL,
    ),
]
SlurmParallelismOpt = Annotated[
    int | None,
    opt(
        "--slurm-array-parallelism",
        metavar="N",
        help="slurm: jobs of the array running at once. \\[default: 256]",
        rich_help_panel=EXECUTORS_PANEL,
    ),
]
SlurmOptOpt = Annotated[
    list[str] | None,
    opt(
        "--slurm-opt",
        metavar="KEY=VALUE",
        help="slurm: an extra sbatch option (mem=32G, account=lab, qos=high); repeatable.",
        rich_help_panel=EXECUTORS_PANEL,
    ),
]
SlurmFolderOpt = Annotated[
    Path | None,
    opt(
        "--slurm-folder",
        metavar="DIR",
        help="slurm: the jobs' logs and pickles. \\[default: RESULTS/../slurm-logs/SWEEP_ID]",
        rich_help_panel=EXECUTORS_PANEL,
    ),
]
DryRunOpt = Annotated[
    bool,
    opt(
        "--dry-run",
        help="Show every planned run with its resolved config and stop (no images or weights are "
        "loaded; missing datasets and description sets are marked).",
    ),
]


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
    precision: PrecisionOpt = "auto",
    results: ResultsOpt = Path("results/runs"),
    aug_views: AugViewsOpt = "10",
    set_: SetOpt = None,
    data_root: DataRootOpt = None,
    cache_dir: CacheDirOpt = None,
    no_cache: NoCacheOpt = False,
    force: ForceOpt = False,
    no_rerun_stale: NoRerunStaleOpt = False,
    dry_run: DryRunOpt = False,
    executor: ExecutorOpt = "local",
    address: AddressOpt = None,
    gpus_per_run: GpusPerRunOpt = None,
    cpus_per_run: CpusPerRunOpt = None,
    slurm_partition: SlurmPartitionOpt = None,
    slurm_time: SlurmTimeOpt = None,
    slurm_array_parallelism: SlurmParallelismOpt = None,
    slurm_opt: SlurmOptOpt = None,
    slurm_folder: SlurmFolderOpt = None,
) -> None:
    """Run methods x datasets x shots x seeds; one record per run; a summary at the end.

    Runs already recorded (same spec, same code) are skipped, so an interrupted sweep
    resumes; a record made by other code (an edited method) is rerun unless --no-rerun-stale.
    With --protocol cross-dataset or domain-generalization, each method is fitted once on
    the source and scored on it and on every target: one record each. With --executor ray or
    slurm, the fits run on other machines, which read and write the results folder, the
    feature cache and the data root themselves: give paths every worker sees.
    """
    options = dict(locals())  # the parameters, before any other name is bound
    given = {f"--{name.replace('_', '-')}": options[name] for name in EXECUTOR_OPTIONS}
    names = split_list(dataset) + split_list(suite)
    if force and no_rerun_stale:
        print_error("--force reruns every run and --no-rerun-stale keeps stale ones: give one of them.")
        raise typer.Exit(USER_ERROR_EXIT)
    if not names and data_root is not None:
        print_error("No dataset given: pass --dataset NAME or --suite NAME (`fewshot list suites`).")
        raise typer.Exit(USER_ERROR_EXIT)
    plan = _plan(
        split_list(method) or None,
        names,
        shots=split_list(shots),
        seeds=split_list(seeds),
        protocol=protocol,
        backbone=backbone,
        source=source,
        sets=list(set_ or []),
        aug_views=aug_views,
        precision=precision,
        device=_plan_device(device, executor, gpus_per_run),
        data_root=data_root,
    )
    runner = _executor(executor, plan, given, no_cache)
    if dry_run:
        show_plan(plan)
        return
    runner.require()  # an extra that is not installed: one line, before anything else
    if plan.toy_default:
        where = "the bundled toy backbone" if backbone == "toy" else f"backbone {backbone}"
        err_console.print(Text(TOY_NOTICE.format(backbone=where), style="yellow"))
    rerun = "all" if force else "none" if no_rerun_stale else "stale"
    with _feature_cache(cache_dir, no_cache) as cache:
        _sweep(plan, results, cache, rerun, runner)


def _plan(methods: list[str] | None, names: list[str], **options: Any) -> SweepPlan:
    """The validated plan; every problem is one red line, then exit 2."""
    try:
        return SweepPlan.from_options(methods, names, **options)
    except PlanError as exc:
        for problem in exc.problems:
            print_error(problem)
        raise typer.Exit(USER_ERROR_EXIT) from None


def _plan_device(device: str, executor: str, gpus_per_run: int | None) -> str:
    """Runs that go to workers with GPUs run on cuda, whatever this machine has."""
    if device == "auto" and executor != "local" and (gpus_per_run or 0) > 0:
        return "cuda"
    return device


def _executor(name: str, plan: SweepPlan, given: dict[str, Any], no_cache: bool) -> Executor:
    """The executor of --executor and its options (checked: one line per mistake)."""
    from fewshot.executors import executor_from_options

    runner = executor_from_options(name, device=plan.specs[0].device, given=given)
    if no_cache and not runner.in_process:
        print_error(
            f"--no-cache keeps features in a temporary folder on this machine, which {name} workers "
            "cannot see: pass --cache-dir on a shared path instead."
        )
        raise typer.Exit(USER_ERROR_EXIT)
    return runner


@contextlib.contextmanager
def _feature_cache(cache_dir: Path | None, no_cache: bool) -> Iterator[FeatureCache]:
    """The feature cache of the sweep; with --no-cache a temporary one, removed at the end."""
    from fewshot.features import FeatureCache

    if not no_cache:
        yield FeatureCache(cache_dir)
        return
    with tempfile.TemporaryDirectory(prefix="fewshot-no-cache-") as folder:
        yield FeatureCache(folder)


def _sweep(plan: SweepPlan, results: Path, cache: FeatureCache, rerun: str, executor: Executor) -> None:
    from fewshot import sweeps
    from fewshot.leaderboard import summary_table

    try:
        outcomes = sweeps.sweep(
            plan, results_dir=results, cache=cache, console=console, rerun=rerun, executor=executor
        )
    except sweeps.SweepInterrupted as stop:
        err_console.print(
            Text(
                f"Interrupted: {stop.written} records of this sweep were written to {stop.results_dir}. "
                f"Rerun the same command to resume: {sweeps.resume_note(rerun)}.",
                style="yellow",
            )
        )
        raise typer.Exit(INTERRUPTED_EXIT) from None
    if outcomes:
        title = "Summary (mean over seeds)"
        console.print(frame_table(summary_table(outcomes), title, ("backbone", "protocol", "precision")))
    kept = [r for r in outcomes if not r.ok and (r.error or "").startswith(sweeps.KEPT_NEWER)]
    failed = [r for r in outcomes if not r.ok and r not in kept]
    if kept:
        print_error(
            f"{len(kept)} of {len(outcomes)} runs were not run: their records were written by a newer "
            f"fewshot (e.g. {kept[0].spec.record_path(results)}) and are kept as they are. Upgrade "
            "fewshot to read them, or move them out of the results folder to rerun those runs."
        )
    if failed:
        where = failed[0].spec.record_path(results)
        print_error(
            f"{len(failed)} of {len(outcomes)} runs failed. Their failure records (with the reason) are "
            f"under {results}, e.g. {where}; `fewshot leaderboard` lists them all."
        )
    if kept or failed:
        raise typer.Exit(FAILED_RUNS_EXIT)
    console.print(
        f"Records in {results}. Next: fewshot leaderboard --results {results}", markup=False, soft_wrap=True
    )


# ------------------------------------------------------------------------------------------
# --dry-run


def show_plan(plan: SweepPlan) -> None:
    """One block per planned fit group (seeds folded): what runs, on which data, with which
    resolved config. Plain text, so it reads (and greps) the same at any terminal width."""
    missing = plan.missing()
    specs = plan.specs
    works = _plan_work(plan)
    console.print(
        f"Planned: {len(specs)} records from {len(plan.fits)} fits; backbone {specs[0].backbone}, "
        f"device {specs[0].device}, precision {specs[0].precision}, "
        f"aug views {specs[0].aug_views or 'online'}. Nothing was run.",
        markup=False,
        soft_wrap=True,
    )
    for group in _grouped(plan):
        first = group[0]
        spec = first.spec
        datasets = [spec.dataset, *(r.target for r in first.records if r.target)]
        absent = [d for d in datasets if d in missing]
        seeds = ",".join(str(f.spec.seed) for f in group)
        head = Text.assemble(
            "\n",
            (spec.variant, "bold"),
            f" · {spec.dataset}" + (f" -> {', '.join(datasets[1:])}" if len(datasets) > 1 else ""),
            f" · {spec.protocol} · {spec.shots} shots · seeds {seeds} · ",
            ("data missing: " + ", ".join(absent), "yellow") if absent else ("data present", "green"),
        )
        console.print(head, soft_wrap=True)
        config = " ".join(
            f"{k}={v!r}" if isinstance(v, str) else f"{k}={v}" for k, v in first.config.to_dict().items()
        )
        console.print(Text("  " + config), soft_wrap=True)  # one line: it greps whole
        console.print(Text("  " + _work_line(works.get(first.spec))), soft_wrap=True)
    _show_totals(plan, works)
    for name, hint in missing.items():
        err_console.print(Text(f"{name}: missing — {hint}", style="yellow"))
    for line in plan.knowledge_problems():  # description sets a method reads
        err_console.print(Text(line, style="yellow"))


def _plan_work(plan: SweepPlan) -> dict[RunSpec, Work | None]:
    """The work of every fit (None where the dataset is missing), splits read once each."""
    from fewshot.workload import fit_work

    known: dict[tuple[object, ...], Work | None] = {}
    works: dict[RunSpec, Work | None] = {}
    for fit in plan.fits:
        s = fit.spec  # seeds change which images, not how many: one count per group
        key = (s.method, s.overrides, s.dataset, s.protocol, s.shots, s.aug_views)
        if key not in known:
            known[key] = fit_work(fit, plan.data_root)
        works[s] = known[key]
    return works


def _work_line(work: Work | None) -> str:
    if work is None:
        return "work per run: the dataset is needed to count it"
    parts = [
        f"{work.images:,} images to encode on a cold cache (support {work.support:,}, val {work.val:,}, "
        f"augmented views {work.views:,}, test {work.test:,}, during training {work.step_images:,})",
        f"{work.steps:,} optimiser steps",
        f"{work.text_positions:,} text positions per step",
    ]
    return "work per run: " + "; ".join(parts)


def _show_totals(plan: SweepPlan, works: dict[RunSpec, Work | None]) -> None:
    from fewshot.workload import sweep_images

    counted = [(fit, work) for fit in plan.fits if (work := works[fit.spec]) is not None]
    if not counted:
        return
    steps = sum(work.steps for _, work in counted)
    note = "" if len(counted) == len(plan.fits) else f" (for the {len(counted)} fits whose data is present)"
    console.print(
        f"\nSweep: {sweep_images(counted):,} images to encode on a cold cache (each test split once), "
        f"{steps:,} optimiser steps{note}.",
        markup=False,
        soft_wrap=True,
    )


def _grouped(plan: SweepPlan) -> list[list[PlannedFit]]:
    """Fits that differ only in seed, together, in plan order."""
    groups: dict[tuple[object, ...], list[PlannedFit]] = {}
    for fit in plan.fits:
        s = fit.spec
        groups.setdefault((s.method, s.overrides, s.dataset, s.protocol, s.shots), []).append(fit)
    return list(groups.values())
