"""The Slurm executor: one submitit job array per sweep, one array task per fit
(``fewshot run --executor slurm``).

Each array task runs :func:`run_slurm_fit`, which is :func:`fewshot.sweeps.execute_fit` with
the task's log file named in each record's provenance (``provenance.log``). The driver waits
for the tasks and streams each fit's lines as it finishes; a task that ends without a result
(killed, out of memory, past ``--slurm-time``) becomes failure records naming its state and its
log, written by the driver. Ctrl-C on the driver cancels the tasks that have not finished.

Logs: submitit's folder for the sweep, ``<results>/../slurm-logs/<sweep id>/`` unless
``folder`` (``--slurm-folder``) says otherwise; one ``<job id>_0_log.out`` per task (stderr
goes into it too), with submitit's pickles beside it. A manifest at
``<results>/.slurm/<sweep id>.json`` names the folder, the cluster and, per task, its job id,
its log and the records it writes: ``fewshot status`` reads it (:mod:`fewshot.executors.status`).

``cluster="local"`` uses submitit's local executor instead of Slurm: the same pickles, folders
and logs, each task a process on this machine (the tests run the executor this way).
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewshot._io import atomic_write_text
from fewshot.executors import FitProgress, import_extra
from fewshot.types import FewshotError

if TYPE_CHECKING:
    from fewshot.features import FeatureCache
    from fewshot.sweeps import FitJob, FitOutcome

__all__ = ["MANIFESTS", "SlurmExecutor", "default_log_folder", "run_slurm_fit"]

MANIFESTS = ".slurm"  # under the results folder: one manifest per Slurm sweep
POLL_S = 2.0


def default_log_folder(results_dir: Path, sweep_id: str) -> Path:
    """``<results>/../slurm-logs/<sweep id>``: beside the results, never among the records."""
    return Path(results_dir).absolute().parent / "slurm-logs" / sweep_id


def run_slurm_fit(job: FitJob) -> FitOutcome:
    """What an array task runs: the fit, its records naming the task's log file."""
    from fewshot.sweeps import execute_fit

    try:
        submitit = import_extra("submitit", "slurm")
        log = str(submitit.JobEnvironment().paths.stdout)
    except Exception:  # outside a submitit job (a direct call): no log to name
        log = ""
    return execute_fit(replace(job, log=log))


@dataclass
class SlurmExecutor:
    """One job array per sweep (see the module docstring)."""

    gpus_per_run: int = 0
    cpus_per_run: int = 1
    partition: str | None = None
    time_min: int = 240
    array_parallelism: int = 256
    options: dict[str, str] = field(default_factory=dict)  # --slurm-opt: extra sbatch options
    folder: Path | None = None
    cluster: str = "slurm"  # "local": submitit's local executor (same jobs and folders, no Slurm)
    poll_s: float = POLL_S

    name = "slurm"
    in_process = False

    def require(self) -> None:
        import_extra("submitit", "slurm")
        if self.cluster == "slurm" and shutil.which("sbatch") is None:
            raise FewshotError(
                "--executor slurm submits with sbatch, which is not on this machine's PATH: run fewshot "
                "on a login node of the cluster."
            )

    def run(
        self, jobs: Sequence[FitJob], *, cache: FeatureCache, progress: FitProgress
    ) -> Generator[tuple[FitJob, FitOutcome], None, None]:
        sweep_id = f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}-{secrets.token_hex(2)}"
        results_dir = jobs[0].results_dir
        folder = Path(self.folder or default_log_folder(results_dir, sweep_id)).absolute()
        submitted = self._submit(jobs, folder)
        _write_manifest(results_dir, sweep_id, self.cluster, folder, submitted)
        pending = dict(enumerate(submitted))
        try:
            while pending:
                progress.start(f"{len(pending)} Slurm jobs pending or running; logs in {folder}")
                finished = [i for i, (task, _) in pending.items() if task.done()]
                if not finished:
                    time.sleep(self.poll_s)
                for i in finished:
                    task, job = pending.pop(i)
                    yield job, _outcome(task, job)
        finally:
            for task, _ in pending.values():  # closed early (Ctrl-C, a full disk): cancel the rest
                task.cancel(check=False)

    def _submit(self, jobs: Sequence[FitJob], folder: Path) -> list[tuple[Any, FitJob]]:
        """Submit the job array; sbatch's refusal is one line."""
        submitit = import_extra("submitit", "slurm")
        executor = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
        executor.update_parameters(**self.parameters())
        try:
            tasks = executor.map_array(run_slurm_fit, list(jobs))
        except Exception as exc:
            reason = " ".join(str(exc).split()) or type(exc).__name__
            raise FewshotError(f"Slurm refused the job array ({reason}); nothing was submitted.") from None
        return list(zip(tasks, jobs, strict=True))

    def parameters(self) -> dict[str, Any]:
        """What goes to submitit's ``update_parameters`` (``slurm_*``: Slurm only)."""
        params: dict[str, Any] = {
            "name": "fewshot",
            "timeout_min": self.time_min,
            "cpus_per_task": self.cpus_per_run,
            "stderr_to_stdout": True,
            "slurm_array_parallelism": self.array_parallelism,
        }
        if self.gpus_per_run:
            params["gpus_per_node"] = self.gpus_per_run
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.options:
            params["slurm_additional_parameters"] = dict(self.options)
        return params


def _outcome(task: Any, job: FitJob) -> FitOutcome:
    """The task's outcome; a task that ended without one becomes failure records."""
    from fewshot.sweeps import lost_fit

    log = str(task.paths.stdout)
    try:
        outcome: FitOutcome = task.result()
    except Exception as exc:  # submitit's UncompletedJobError / FailedJobError
        if type(exc).__name__ == "FailedJobError":
            reason = f"the Slurm job {task.job_id} raised {_last_line(str(exc))}"
        else:
            reason = f"the Slurm job {task.job_id} ended without a result (state {task.state})"
        return lost_fit(job, f"{reason}; its log: {log}", log)
    return outcome


def _last_line(message: str) -> str:
    """The exception line of a trace submitit quotes between dashed lines."""
    parts = message.split("-" * 22)
    trace = parts[1] if len(parts) > 2 else message
    lines = [line.strip() for line in trace.splitlines() if line.strip()]
    return lines[-1] if lines else "an error"


def _write_manifest(
    results_dir: Path, sweep_id: str, cluster: str, folder: Path, submitted: list[tuple[Any, FitJob]]
) -> None:
    """``<results>/.slurm/<sweep id>.json``: what ``fewshot status`` needs to find the jobs."""
    manifest = {
        "sweep": sweep_id,
        "cluster": cluster,
        "folder": str(folder),
        "jobs": [
            {
                "job_id": str(task.job_id),
                "log": str(task.paths.stdout),
                "specs": [spec.to_dict() for spec in job.todo],
            }
            for task, job in submitted
        ],
    }
    path = Path(results_dir) / MANIFESTS / f"{sweep_id}.json"
    try:
        atomic_write_text(path, json.dumps(manifest, indent=1) + "\n")
    except OSError as exc:  # the jobs run anyway; only `fewshot status` misses them
        warnings.warn(
            f"Could not write {path} ({exc}): fewshot status will not see this sweep's jobs.", stacklevel=2
        )
