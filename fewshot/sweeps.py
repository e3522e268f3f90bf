"""Sweeps: a validated plan run fit by fit, one record per run, resumable.

``sweep(plan)`` runs a :class:`~fewshot.planning.SweepPlan` (a list of specs is planned
first, and validated the same way), one fit at a time through :func:`fewshot.runner.run_fit`,
and writes each record atomically under the results folder.

- A run whose record exists with the same spec hash, made by the same code
  (``provenance.code_digest``, :mod:`fewshot.codeid`), is skipped: a killed sweep resumes
  where it stopped. A record made by other code is *stale*: it is rerun by default
  (``rerun="stale"``), every selected run with ``rerun="all"`` (``--force``), none with
  ``rerun="none"`` (``--no-rerun-stale``). A replaced record is first copied to
  ``<results>/.history/``; nothing is overwritten in place.
- A run that fails writes a failure record and the sweep goes on. A record that cannot be
  written (a folder in its place, no permission) fails that run, with the reason; a full disk
  stops the sweep with one line saying what was saved. A record written by a newer fewshot is
  kept and never overwritten.
- The results folder and the feature cache are checked before the first run.
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fewshot import runner
from fewshot._io import atomic_write_bytes, ensure_writable_dir
from fewshot.codeid import code_digest
from fewshot.results import NewerRecordError, find_record, write_record
from fewshot.types import FewshotError, RunResult, RunSpec

if TYPE_CHECKING:
    from rich.console import Console

    from fewshot.features import FeatureCache
    from fewshot.planning import SweepPlan
    from fewshot.runner import ProgressFn

__all__ = ["RERUN", "DiskFullError", "SweepInterrupted", "sweep"]

RERUN = ("stale", "all", "none")
HISTORY = ".history"


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
) -> list[RunResult]:
    """Run every fit of ``plan``, writing one record per run; skip runs already recorded by
    the same code (see the module docstring for ``rerun``). ``data_root`` is for a list of
    specs (a plan carries its own). Returns the results in plan order."""
    from rich.console import Console

    from fewshot.features import FeatureCache
    from fewshot.planning import SweepPlan

    if rerun not in RERUN:
        raise ValueError(f"rerun must be one of {', '.join(RERUN)}, got {rerun!r}.")
    if not isinstance(plan, SweepPlan):
        plan = SweepPlan.from_specs(plan, data_root=data_root)
    console = console or Console(stderr=True)
    cache = cache if cache is not None else FeatureCache()
    plan.check_ready()  # reads only: nothing is created for input that is refused
    fix = "pass --results DIR (a folder you can write)"
    ensure_writable_dir(Path(results_dir), "The results folder", fix)
    cache.check_usable()
    state = _Sweep(Path(results_dir), plan.data_root, cache, rerun)
    try:
        with _SweepProgress(console, len(plan.fits)) as bar, _threads_for(plan.specs):
            for planned in plan.fits:
                state.run(planned.records, bar)
    except KeyboardInterrupt as exc:
        raise SweepInterrupted(state.written, Path(results_dir)) from exc
    return [state.done[spec] for spec in plan.specs]


@dataclass
class _Sweep:
    """The state of one sweep: what is done, and how many records it wrote."""

    results_dir: Path
    data_root: Path | None
    cache: FeatureCache
    rerun: str
    done: dict[RunSpec, RunResult] = field(default_factory=dict)
    written: int = 0
    digests: dict[str, str] = field(default_factory=dict)

    def run(self, records: Sequence[RunSpec], bar: _SweepProgress) -> None:
        """One fit: reuse what is recorded, run the rest, write their records."""
        todo = [spec for spec in dict.fromkeys(records) if not self._reuse(spec)]
        fit_spec = records[0].fit_spec
        head = f"{fit_spec.variant} {fit_spec.dataset} k{fit_spec.shots} s{fit_spec.seed}"
        if not todo:
            bar.advance(f"{head}: recorded, skipped")
            return
        bar.start(head)
        results = _run_or_fail(todo, self.data_root, self.cache, bar.epochs)
        results = [self._write(spec, result) for spec, result in zip(todo, results, strict=True)]
        bar.advance("\n".join(_one_line(result) for result in results))

    def _reuse(self, spec: RunSpec) -> bool:
        """Keep the recorded result of ``spec`` if it stands; False when it must run."""
        try:
            previous = find_record(spec, self.results_dir)
        except NewerRecordError as exc:  # never overwritten: reported as not run
            self.done[spec] = RunResult(spec, "failed", error=f"kept, not rerun: {exc}")
            return True
        if previous is None or not previous.ok or self.rerun == "all":
            return False
        stale = previous.provenance.get("code_digest") != self._digest(spec.method)
        if stale and self.rerun == "stale":
            return False
        self.done[spec] = previous
        return True

    def _digest(self, method: str) -> str:
        if method not in self.digests:
            from fewshot.methods import METHODS

            self.digests[method] = code_digest(METHODS.get(method))
        return self.digests[method]

    def _write(self, spec: RunSpec, result: RunResult) -> RunResult:
        """Write a run's record (the one it replaces goes to history first); a write that
        fails makes the run a failure, a full disk stops the sweep."""
        path = result.spec.record_path(self.results_dir)
        try:
            _to_history(path, self.results_dir)
            write_record(result, path)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DiskFullError(
                    f"The disk is full writing {path} ({exc.strerror}). {self.written} records of this "
                    f"sweep are in {self.results_dir}, intact; free space and rerun the same command "
                    "to resume (recorded runs are skipped)."
                ) from None
            result = RunResult(
                result.spec, "failed", error=f"its record could not be written to {path}: {exc}"
            )
        else:
            self.written += 1
        self.done[spec] = result
        return result


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


def _run_or_fail(
    specs: list[RunSpec], data_root: Path | None, cache: FeatureCache, progress: ProgressFn
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

    def advance(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)
        self.progress.advance(self.sweep_task)

    def epochs(self, n: int, description: str) -> Iterator[int]:
        task = self.progress.add_task(f"  {description}", total=n)
        try:
            for i in range(n):
                yield i
                self.progress.advance(task)
        finally:
            self.progress.remove_task(task)
