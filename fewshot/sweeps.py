"""Sweeps: a validated plan run fit by fit, one record per run, resumable.

``sweep(plan)`` runs a :class:`~fewshot.planning.SweepPlan` (a list of specs is planned
first, and validated the same way), one fit at a time through :func:`fewshot.runner.run_fit`,
and writes each record atomically under the results folder. A run whose record exists with
the same spec hash is skipped, so a killed sweep resumes where it stopped; a run that fails
writes a failure record and the sweep goes on.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fewshot import runner
from fewshot.types import RunResult, RunSpec

if TYPE_CHECKING:
    from rich.console import Console

    from fewshot.features import FeatureCache
    from fewshot.planning import SweepPlan
    from fewshot.runner import ProgressFn

__all__ = ["sweep"]


def sweep(
    plan: SweepPlan | Sequence[RunSpec],
    *,
    results_dir: Path,
    data_root: Path | None = None,
    cache: FeatureCache | None = None,
    console: Console | None = None,
) -> list[RunResult]:
    """Run every fit of ``plan``, writing one record per run; skip runs already recorded.

    A list of specs is turned into a plan first (:meth:`SweepPlan.from_specs`), so it is
    validated the same way. Everything that needs data or weights (datasets present,
    backbones loadable) is checked before the first run, so bad input fails before anything
    is written. A run that raises writes a failure record and the sweep goes on.
    """
    from rich.console import Console

    from fewshot.features import FeatureCache
    from fewshot.planning import SweepPlan

    if not isinstance(plan, SweepPlan):
        plan = SweepPlan.from_specs(plan, data_root=data_root)
    console = console or Console(stderr=True)
    cache = cache if cache is not None else FeatureCache()
    plan.check_ready()
    done: dict[RunSpec, RunResult] = {}
    with _SweepProgress(console, len(plan.fits)) as bar, _threads_for(plan.specs):
        for planned in plan.fits:
            done.update(_run_planned(planned.records, results_dir, plan.data_root, cache, bar))
    return [done[spec] for spec in plan.specs]


def _run_planned(
    records: Sequence[RunSpec],
    results_dir: Path,
    data_root: Path | None,
    cache: FeatureCache,
    bar: _SweepProgress,
) -> dict[RunSpec, RunResult]:
    """One fit of a sweep: records already written are reused, the others run and are written."""
    from fewshot.results import find_record, write_record

    out: dict[RunSpec, RunResult] = {}
    todo: list[RunSpec] = []
    for spec in dict.fromkeys(records):
        previous = find_record(spec, results_dir)
        if previous is not None and previous.ok:
            out[spec] = previous
        else:
            todo.append(spec)
    fit_spec = records[0].fit_spec
    head = f"{fit_spec.variant} {fit_spec.dataset} k{fit_spec.shots} s{fit_spec.seed}"
    if not todo:
        bar.advance(f"{head}: recorded, skipped")
        return out
    bar.start(head)
    results = _run_or_fail(todo, data_root, cache, bar.epochs)
    for spec, result in zip(todo, results, strict=True):
        write_record(result, result.spec.record_path(results_dir))
        out[spec] = result
    bar.advance("\n".join(_one_line(result) for result in results))
    return out


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
