"""fewshot: a benchmark harness for few-shot adaptation of CLIP-like models.

The Python API mirrors ``fewshot run``; the three functions share its plan builder
(:meth:`fewshot.planning.SweepPlan.from_options`), so the same input is checked the same way::

    import fewshot

    plan = fewshot.plan(methods="zeroshot,coop", datasets="toy", shots=[1, 16], seeds=[1])
    results = fewshot.sweep(plan, results_dir="results/runs")   # one record per run
    result = fewshot.run("coop", "toy-colors", shots=16, seed=1)  # one run, no record written

Importing the package is cheap: nothing here imports torch. Heavy modules are imported
where they are used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewshot.types import RunSpec

if TYPE_CHECKING:
    from fewshot.executors import Executor
    from fewshot.planning import SweepPlan
    from fewshot.types import RunResult

__version__ = "0.1.0"

__all__ = ["RunSpec", "__version__", "plan", "run", "sweep"]


def plan(methods: Any = None, datasets: Any = None, **options: Any) -> SweepPlan:
    """A validated sweep plan: ``methods`` and ``datasets`` (names, suites; lists or comma
    strings) with the options of ``fewshot run`` as keywords (``shots``, ``seeds``,
    ``protocol``, ``backbone``, ``source``, ``sets``, ``aug_views``, ``precision``,
    ``device``, ``data_root``). Bad input raises :class:`fewshot.planning.PlanError`
    listing every problem; ``plan.fits`` holds each run's resolved config."""
    from fewshot.planning import SweepPlan

    return SweepPlan.from_options(methods, datasets, **options)


def sweep(
    plan: SweepPlan | None = None,
    *,
    results_dir: str | Path = "results/runs",
    cache_dir: str | Path | None = None,
    executor: Executor | None = None,
    **options: Any,
) -> list[RunResult]:
    """Run a plan (or the plan of ``options``, as :func:`plan` takes them), writing one
    record per run under ``results_dir`` and skipping runs already recorded; returns the
    results in plan order (failed runs have ``ok`` false and an ``error``). ``executor``
    runs the fits elsewhere (:mod:`fewshot.executors`: ``RayExecutor``, ``SlurmExecutor``)."""
    from fewshot import sweeps
    from fewshot.features import FeatureCache
    from fewshot.planning import SweepPlan

    if plan is None:
        plan = SweepPlan.from_options(options.pop("methods", None), options.pop("datasets", None), **options)
    elif options:
        raise TypeError(f"sweep() takes a plan or plan options, not both (got {', '.join(options)}).")
    cache = FeatureCache(cache_dir)
    return sweeps.sweep(plan, results_dir=Path(results_dir), cache=cache, executor=executor)


def run(
    method: str,
    dataset: str,
    *,
    shots: int = 16,
    seed: int = 1,
    cache_dir: str | Path | None = None,
    **options: Any,
) -> RunResult:
    """One run, validated like a sweep, returned and not recorded (use :func:`sweep` to
    keep records). ``options`` as :func:`plan` takes them; a transfer protocol returns the
    source's result."""
    from fewshot import runner
    from fewshot.features import FeatureCache
    from fewshot.planning import SweepPlan

    planned = SweepPlan.from_options(method, dataset, shots=[shots], seeds=[seed], **options)
    if len(planned.fits) != 1:
        raise TypeError(
            f"run() takes one method and one dataset; {method!r} on {dataset!r} plans "
            f"{len(planned.fits)} fits. Use fewshot.sweep() for several."
        )
    planned.check_ready()
    fit = planned.fits[0]
    return runner.run_fit(list(fit.records), data_root=planned.data_root, cache=FeatureCache(cache_dir))[0]
