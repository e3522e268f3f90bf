"""Executors: where the fits of a sweep run. One small interface, three implementations.

The driver (:func:`fewshot.sweeps.sweep`) decides which records to reuse, reading them on the
results folder, and hands every fit that still has records to write to an executor as a
:class:`~fewshot.sweeps.FitJob`. Every executor runs the same module-level, picklable worker
function, :func:`fewshot.sweeps.execute_fit`, which runs the fit and writes its records where it
runs (history copy first, atomic writes, failure records), so skip-if-recorded, failure records
and atomic writes hold unchanged under each of them:

- ``local`` (:class:`LocalExecutor`, the default): in this process, one fit after the other,
  with a progress bar per run's epochs;
- ``ray`` (:class:`~fewshot.executors.ray_tasks.RayExecutor`): each fit a Ray task, retried
  when its worker dies (``max_retries``), never when the run raises (that is a failure record);
- ``slurm`` (:class:`~fewshot.executors.slurm_jobs.SlurmExecutor`): one submitit job array per
  sweep, one array task per fit; logs per job in a folder beside the results.

``run`` yields each fit's :class:`~fewshot.sweeps.FitOutcome` as the fit finishes, so the
driver streams the per-run lines. A fit whose worker died, or whose job ended without a
result, comes back as :func:`~fewshot.sweeps.lost_fit`: failure records the driver writes.
Ray and submitit are optional extras (``fewshot[ray]``, ``fewshot[slurm]``), imported only
when their executor runs; without them the executor fails with one line naming the extra.
The results folder, the feature cache and the data root must be paths every worker sees.
"""

from __future__ import annotations

import importlib
from collections.abc import Generator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fewshot.types import ConfigError, FewshotError

if TYPE_CHECKING:
    from fewshot.features import FeatureCache
    from fewshot.sweeps import FitJob, FitOutcome

__all__ = [
    "EXECUTORS",
    "Executor",
    "FitProgress",
    "LocalExecutor",
    "executor_from_options",
    "import_extra",
]

EXECUTORS = ("local", "ray", "slurm")
SHARED_PATHS = "--results, --cache-dir and --data-root must be on a filesystem every worker sees"


class FitProgress(Protocol):
    """What an executor reports to the sweep's progress display."""

    def start(self, description: str) -> None: ...

    def epochs(self, n: int, description: str) -> Iterator[int]: ...


class Executor(Protocol):
    """Runs the fits of a sweep (see the module docstring)."""

    name: str
    in_process: bool  # runs share this process (its devices, its cache object, its progress bar)

    def require(self) -> None:
        """Raise one :class:`FewshotError` line if this executor cannot run here (an extra
        not installed); called before anything is read or written."""

    def run(
        self, jobs: Sequence[FitJob], *, cache: FeatureCache, progress: FitProgress
    ) -> Generator[tuple[FitJob, FitOutcome], None, None]:
        """Run every job; yield each with its outcome as it finishes. Closing the iterator
        early (Ctrl-C, a full disk) cancels what has not finished."""
        ...


class LocalExecutor:
    """Today's behaviour: every fit in this process, one after the other."""

    name = "local"
    in_process = True

    def require(self) -> None:
        return None

    def run(
        self, jobs: Sequence[FitJob], *, cache: FeatureCache, progress: FitProgress
    ) -> Generator[tuple[FitJob, FitOutcome], None, None]:
        from fewshot.sweeps import execute_fit

        for job in jobs:
            progress.start(job.head)
            yield job, execute_fit(job, cache=cache, progress=progress.epochs)


def import_extra(module: str, extra: str) -> Any:
    """``import module``, or one line naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise FewshotError(
            f"--executor {extra} needs {module}, which is not installed: pip install 'fewshot[{extra}]'."
        ) from None


# ------------------------------------------------------------------------------------------
# From the command line's options


_OPTION_OWNERS = {
    "--address": ("ray",),
    "--gpus-per-run": ("ray", "slurm"),
    "--cpus-per-run": ("ray", "slurm"),
    "--slurm-partition": ("slurm",),
    "--slurm-time": ("slurm",),
    "--slurm-array-parallelism": ("slurm",),
    "--slurm-opt": ("slurm",),
    "--slurm-folder": ("slurm",),
}


def executor_from_options(name: str, *, device: str, given: Mapping[str, Any] | None = None) -> Executor:
    """The executor ``fewshot run --executor NAME`` asks for. ``given`` maps the executor
    options set on the command line (``--address``, ``--slurm-time``, ...) to their values;
    one that does not apply to ``name`` is an error. GPUs per run default to 1 when the runs'
    ``device`` is CUDA, else 0."""
    given = {key: value for key, value in (given or {}).items() if value not in (None, [], ())}
    if name not in EXECUTORS:
        raise ConfigError(f"Unknown executor {name!r}: use {', '.join(EXECUTORS)}.")
    wrong = [option for option in given if name not in _OPTION_OWNERS[option]]
    if wrong:
        owners = " or ".join(f"--executor {o}" for o in _OPTION_OWNERS[wrong[0]])
        raise ConfigError(f"{wrong[0]} applies to {owners} only, not --executor {name}.")
    if name == "local":
        return LocalExecutor()
    gpus = _count(given.get("--gpus-per-run", 1 if device.startswith("cuda") else 0), "--gpus-per-run")
    cpus = _count(given.get("--cpus-per-run", 1), "--cpus-per-run", least=1)
    if name == "ray":
        from fewshot.executors.ray_tasks import RayExecutor

        return RayExecutor(address=given.get("--address"), gpus_per_run=gpus, cpus_per_run=cpus)
    from fewshot.executors.slurm_jobs import SlurmExecutor

    return SlurmExecutor(
        gpus_per_run=gpus,
        cpus_per_run=cpus,
        partition=given.get("--slurm-partition"),
        time_min=_count(given.get("--slurm-time", 240), "--slurm-time", least=1),
        array_parallelism=_count(
            given.get("--slurm-array-parallelism", 256), "--slurm-array-parallelism", least=1
        ),
        options=parse_slurm_opts(given.get("--slurm-opt", ())),
        folder=Path(given["--slurm-folder"]) if "--slurm-folder" in given else None,
    )


def _count(value: Any, option: str, least: int = 0) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = least - 1
    if number < least:
        raise ConfigError(f"{option} takes an integer >= {least}, got {value!r}.")
    return number


def parse_slurm_opts(items: Sequence[str]) -> dict[str, str]:
    """``--slurm-opt key=value`` (repeatable) -> sbatch options (``mem=32G`` -> ``--mem=32G``)."""
    options: dict[str, str] = {}
    for item in items:
        key, sep, value = str(item).partition("=")
        key = key.strip().lstrip("-")
        if not sep or not key:
            raise ConfigError(f"Bad --slurm-opt {item!r}: write key=value (e.g. --slurm-opt mem=32G).")
        options[key] = value.strip()
    return options
