"""Sweeps: a validated plan run fit by fit, one record per run, resumable.

``sweep(plan)`` runs a :class:`~fewshot.planning.SweepPlan` (a list of specs is planned
first, and validated the same way) and writes each record atomically under the results
folder. The driver (:func:`sweep`) decides, per fit, which records to reuse; an executor
(:mod:`fewshot.executors`: in this process, Ray or Slurm) runs the rest, each fit through
:func:`execute_fit`, which runs :func:`fewshot.runner.run_fit` and writes the fit's records
where it runs. So every rule below holds under every executor.

- A run whose record exists with the same spec hash, made by the same code
  (``provenance.code_digest``, :mod:`fewshot.codeid`), is skipped: a killed sweep resumes
  where it stopped. A record made by other code, or with a description set whose content
  has changed since (``provenance.knowledge``, :mod:`fewshot.descriptions`), is *stale*: it
  is rerun by default
  (``rerun="stale"``), every selected run with ``rerun="all"`` (``--force``), none with
  ``rerun="none"`` (``--no-rerun-stale``). A replaced record is first copied to
  ``<results>/.history/``; nothing is overwritten in place.
- A run that fails writes a failure record and the sweep goes on; so does a fit whose worker
  died or whose job ended without a result (the driver writes those). A record that cannot be
  written (a folder in its place, no permission) fails that run, with the reason; a full disk
  stops the sweep with one line saying what was saved. A record written by a newer fewshot is
  kept and never overwritten.
- The results folder and the feature cache are checked before the first run.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fewshot import runner
from fewshot._io import atomic_write_bytes, ensure_writable_dir
from fewshot.codeid import code_digest
from fewshot.descriptions.wiring import knowledge_changed
from fewshot.results import NewerRecordError, command_line, find_record, write_record
from fewshot.types import FewshotError, RunResult, RunSpec

if TYPE_CHECKING:
    from rich.console import Console

    from fewshot.executors import Executor
    from fewshot.features import FeatureCache
    from fewshot.planning import PlannedFit, SweepPlan
    from fewshot.runner import ProgressFn

__all__ = [
    "KEPT_NEWER",
    "RERUN",
    "DiskFullError",
    "FitJob",
    "FitOutcome",
    "SweepInterrupted",
    "execute_fit",
    "lost_fit",
    "resume_note",
    "sweep",
    "write_results",
]

RERUN = ("stale", "all", "none")
HISTORY = ".history"
KEPT_NEWER = "kept, not rerun:"  # the error of a run whose record a newer fewshot wrote


class DiskFullError(FewshotError):
    """The disk filled up while writing a record; the sweep stopped."""


class SweepInterrupted(KeyboardInterrupt):
    """Ctrl-C during a sweep; ``written`` records were written before it."""

    def __init__(self, written: int, results_dir: Path) -> None:
        super().__init__(written, results_dir)
        self.written, self.results_dir = written, results_dir


def sweep(
    plan: SweepPlan | Sequence[RunSpec],
    *,
    results_dir: Path,
    data_root: Path | None = None,
    cache: FeatureCache | None = None,
    console: Console | None = None,
    rerun: str = "stale",
    executor: Executor | None = None,
) -> list[RunResult]:
    """Run every fit of ``plan``, writing one record per run; skip runs already recorded by
    the same code (see the module docstring for ``rerun``). ``data_root`` is for a list of
    specs (a plan carries its own). ``executor`` runs the fits (default: in this process,
    one after the other; :mod:`fewshot.executors`). Returns the results in plan order."""
    from rich.console import Console

    from fewshot.executors import LocalExecutor
    from fewshot.features import FeatureCache
    from fewshot.planning import SweepPlan

    if rerun not in RERUN:
        raise ValueError(f"rerun must be one of {', '.join(RERUN)}, got {rerun!r}.")
    if not isinstance(plan, SweepPlan):
        plan = SweepPlan.from_specs(plan, data_root=data_root)
    executor = executor if executor is not None else LocalExecutor()
    console = console or Console(stderr=True, markup=False)
    cache = cache if cache is not None else FeatureCache()
    executor.require()  # an extra that is not installed: one line, before anything is read
    plan.check_ready(backbone_device=None if executor.in_process else "cpu")  # reads only
    fix = "pass --results DIR (a folder you can write)"
    ensure_writable_dir(Path(results_dir), "The results folder", fix)
    cache.check_usable()
    state = _Sweep(Path(results_dir), plan.data_root, cache, rerun, executor)
    try:
        with _SweepProgress(console, len(plan.fits)) as bar, _threads_for(plan.specs):
            state.run(plan.fits, bar)
    except KeyboardInterrupt as exc:
        raise SweepInterrupted(state.written, Path(results_dir)) from exc
    return [state.done[spec] for spec in plan.specs]


@dataclass(frozen=True)
class FitJob:
    """The unit of work of every executor: the records of one fit that still need running.

    Picklable (specs and paths only), so that a Ray task or a Slurm job gets it as it is.
    ``executor`` and ``log`` (a Slurm job's log file) go into each record's provenance.
    """

    todo: tuple[RunSpec, ...]
    results_dir: Path
    data_root: Path | None
    cache_root: Path
    executor: str = "local"
    log: str = ""
    command: str = ""  # the driver's command line (a worker's own is the executor's)

    @property
    def head(self) -> str:
        """The fit in a few words, e.g. ``coop toy-colors k16 s1``."""
        return _head(self.todo[0].fit_spec)


@dataclass(frozen=True)
class FitOutcome:
    """What a fit gives back: its results, how many records it wrote, and, when the disk
    filled up, where (the results of records not written are left out)."""

    results: tuple[RunResult, ...]
    written: int
    disk_full: str | None = None
    lost: bool = False  # the job died without writing: the driver writes these failure records


def execute_fit(
    job: FitJob, *, cache: FeatureCache | None = None, progress: ProgressFn | None = None
) -> FitOutcome:
    """The worker side of a sweep, the same under every executor: run the fit of
    ``job.todo`` (a run that raises becomes a failure record) and write each record as the
    sweep writes it (history copy first, atomic; a write that fails fails its run)."""
    from fewshot.features import FeatureCache

    cache = cache if cache is not None else FeatureCache(job.cache_root)
    with _threads_for(job.todo):
        results = _run_or_fail(list(job.todo), job.data_root, cache, progress)
    where = {"executor": job.executor, "log": job.log, "command": job.command}
    where = {key: value for key, value in where.items() if value}
    return write_results(job, [replace(r, provenance={**r.provenance, **where}) for r in results])


def lost_fit(job: FitJob, reason: str, log: str = "") -> FitOutcome:
    """A fit whose worker died or whose job ended without a result: failure records for the
    driver to write (:func:`write_results`), with the reason and the job's log."""
    from fewshot.results import collect_provenance

    extra = {"executor": job.executor, "log": log, "command": job.command}
    provenance = collect_provenance(**{key: value for key, value in extra.items() if value})
    failed = [RunResult(spec, "failed", error=reason, provenance=provenance) for spec in job.todo]
    return FitOutcome(tuple(failed), 0, lost=True)


def write_results(job: FitJob, results: Sequence[RunResult]) -> FitOutcome:
    """Write each run's record; stop at a full disk (the outcome says where)."""
    out: list[RunResult] = []
    written = 0
    for result in results:
        try:
            result, ok = _write(job.results_dir, result)
        except _DiskFull as full:
            return FitOutcome(tuple(out), written, disk_full=str(full))
        out.append(result)
        written += ok
    return FitOutcome(tuple(out), written)


class _DiskFull(Exception):
    """No space left writing a record; the message says which and why."""


def _write(results_dir: Path, result: RunResult) -> tuple[RunResult, bool]:
    """Write a run's record (the one it replaces goes to history first); a write that fails
    makes the run a failure, a full disk raises :class:`_DiskFull`. Returns the result and
    whether its record was written."""
    path = result.spec.record_path(results_dir)
    try:
        _to_history(path, results_dir)
        write_record(result, path)
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise _DiskFull(f"writing {path} ({exc.strerror})") from None
        error = (
            f"its record path {path} is a folder: move it away and rerun"
            if path.is_dir()
            else f"its record could not be written to {path}: {exc}"
        )
        return RunResult(result.spec, "failed", error=error, provenance=result.provenance), False
    return result, True


@dataclass
class _Sweep:
    """The driver's state of one sweep: what is done, and how many records it wrote."""

    results_dir: Path
    data_root: Path | None
    cache: FeatureCache
    rerun: str
    executor: Executor
    done: dict[RunSpec, RunResult] = field(default_factory=dict)
    written: int = 0
    digests: dict[str, str] = field(default_factory=dict)

    def run(self, fits: Sequence[PlannedFit], bar: _SweepProgress) -> None:
        """Reuse what is recorded (here, reading the shared results folder), hand the rest
        to the executor, and take each fit's outcome as it finishes."""
        jobs = []
        for planned in fits:
            todo = tuple(spec for spec in dict.fromkeys(planned.records) if not self._reuse(spec))
            kept = [self.done[s] for s in planned.records if s in self.done and not self.done[s].ok]
            if todo:
                jobs.append(self._job(todo))
            if kept:  # records of a newer fewshot: kept, said why
                bar.say("\n".join(_one_line(result) for result in kept))
            if not todo:
                bar.advance(f"{_head(planned.spec)}: recorded, skipped")
        if not jobs:
            return
        with contextlib.closing(self.executor.run(jobs, cache=self.cache, progress=bar)) as outcomes:
            for job, outcome in outcomes:
                self._take(job, outcome, bar)

    def _job(self, todo: tuple[RunSpec, ...]) -> FitJob:
        """The job of one fit; a remote worker gets absolute paths (its working folder differs)."""
        if self.executor.in_process:
            return FitJob(todo, self.results_dir, self.data_root, self.cache.root)
        data_root = self.data_root.absolute() if self.data_root is not None else None
        results_dir, cache_root = self.results_dir.absolute(), self.cache.root.absolute()
        command = command_line() or ""
        return FitJob(todo, results_dir, data_root, cache_root, self.executor.name, command=command)

    def _take(self, job: FitJob, outcome: FitOutcome, bar: _SweepProgress) -> None:
        """Keep a fit's results (writing the failure records of a lost job) and print them."""
        if outcome.lost:
            outcome = write_results(job, outcome.results)
        self.written += outcome.written
        for result in outcome.results:
            self.done[result.spec] = result
        if outcome.disk_full is not None:
            raise DiskFullError(
                f"The disk is full {outcome.disk_full}. {self.written} records of this sweep are in "
                f"{self.results_dir}, intact; free space and rerun the same command to resume "
                f"({resume_note(self.rerun)})."
            )
        bar.advance("\n".join(_one_line(result) for result in outcome.results))

    def _reuse(self, spec: RunSpec) -> bool:
        """Keep the recorded result of ``spec`` if it stands; False when it must run."""
        try:
            previous = find_record(spec, self.results_dir)
        except NewerRecordError as exc:  # never overwritten: reported as not run
            self.done[spec] = RunResult(spec, "failed", error=f"{KEPT_NEWER} {exc}")
            return True
        if previous is None or not previous.ok or self.rerun == "all":
            return False
        stale = previous.provenance.get("code_digest") != self._digest(spec.method)
        stale = stale or knowledge_changed(spec, previous.provenance, self.data_root)
        if stale and self.rerun == "stale":
            return False
        self.done[spec] = previous
        return True

    def _digest(self, method: str) -> str:
        if method not in self.digests:
            from fewshot.methods import METHODS

            self.digests[method] = code_digest(METHODS.get(method))
        return self.digests[method]


def resume_note(rerun: str) -> str:
    """What a rerun of the same command does with the records already written."""
    if rerun == "all":
        return "without --force, the runs recorded so far are skipped"
    return "recorded runs are skipped"


def _to_history(path: Path, results_dir: Path) -> None:
    """Copy the record at ``path`` (if any) to ``<results>/.history/`` with a time stamp."""
    if not path.is_file():
        return
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    relative = path.relative_to(results_dir)
    target = results_dir / HISTORY / relative.parent / f"{relative.stem}.{stamp}.json"
    atomic_write_bytes(target, path.read_bytes())


@contextlib.contextmanager
def _threads_for(specs: Sequence[RunSpec]) -> Iterator[None]:
    """One CPU thread for sweeps of the toy backbone on CPU.

    Its matrices are tiny (width 128): a second thread saves nothing and, when other
    processes compete for the cores, synchronisation made CoOp runs ten times slower.
    """
    if not specs or any(s.backbone != "toy" or s.device != "cpu" for s in specs):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _head(fit: RunSpec) -> str:
    return f"{fit.variant} {fit.dataset} k{fit.shots} s{fit.seed}"


def _run_or_fail(
    specs: list[RunSpec], data_root: Path | None, cache: FeatureCache, progress: ProgressFn | None
) -> list[RunResult]:
    try:
        return runner.run_fit(specs, data_root=data_root, cache=cache, progress=progress)
    except (KeyboardInterrupt, SystemExit):
        raise  # an interrupted run leaves no record; rerunning the sweep resumes here
    except Exception as exc:
        return [runner.failure(spec, exc) for spec in specs]


def _one_line(result: RunResult) -> str:
    spec = result.spec
    to = f" -> {spec.target}" if spec.target else ""
    head = f"{spec.variant} {spec.dataset}{to} k{spec.shots} s{spec.seed}"
    if not result.ok:
        return f"{head}: failed ({result.error})"
    scores = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in result.metrics.items())
    return f"{head}: {scores} ({result.costs.get('wall_time_s', 0):.1f}s)"


class _SweepProgress:
    """Rich progress: one bar for the sweep, one for the current run's epochs. Lines it
    prints are plain text, never rich markup (a failure reason may hold "[/path]")."""

    def __init__(self, console: Console, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.sweep_task = self.progress.add_task("runs", total=total)

    def __enter__(self) -> _SweepProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(None, None, None)

    def start(self, description: str) -> None:
        self.progress.update(self.sweep_task, description=f"runs · {description}")

    def say(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def advance(self, line: str) -> None:
        self.say(line)
        self.progress.advance(self.sweep_task)

    def epochs(self, n: int, description: str) -> Iterator[int]:
        task = self.progress.add_task(f"  {description}", total=n)
        try:
            for i in range(n):
                yield i
                self.progress.advance(task)
        finally:
            self.progress.remove_task(task)
