"""Where the runs of a results folder stand: done, failed, pending or running.

Done and failed come from the records. Pending and running come from the Slurm sweeps that
wrote a manifest into the folder (``<results>/.slurm/<sweep id>.json``,
:mod:`fewshot.executors.slurm_jobs`): each job's state is read from its submitit folder (a
result pickle means it finished) and, for Slurm, from ``sacct`` through submitit. A job that
is pending or running shows so even where an older record exists; a job that ended without
writing its records counts them as failed, naming the job's state and log. Where job states
cannot be read (no ``sacct`` here), such runs count as pending, with a note saying so.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fewshot.executors.slurm_jobs import MANIFESTS
from fewshot.results import iter_records
from fewshot.types import RunSpec

__all__ = ["STATES", "RunState", "Status", "job_states", "sweep_status"]

STATES = ("done", "failed", "pending", "running")
_PENDING = {"PENDING", "REQUEUED", "SUSPENDED", "PREEMPTED", "RESIZING", "REQUEUE_HOLD", "REQUEUE_FED"}
_RUNNING = {"RUNNING", "COMPLETING", "CONFIGURING", "STAGE_OUT", "SIGNALING"}


@dataclass(frozen=True)
class RunState:
    """One record's state; ``detail`` is the failure reason (with the log, if any)."""

    spec: RunSpec
    state: str
    detail: str = ""


@dataclass
class Status:
    """Every known run of a results folder, and notes on what could not be read."""

    runs: list[RunState] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def counts(self) -> dict[tuple[str, str], dict[str, int]]:
        """(method variant, dataset) -> {state: count}, in sorted order."""
        out: dict[tuple[str, str], dict[str, int]] = {}
        for run in sorted(self.runs, key=lambda r: (r.spec.variant, r.spec.dataset)):
            row = out.setdefault((run.spec.variant, run.spec.dataset), dict.fromkeys(STATES, 0))
            row[run.state] += 1
        return out


def sweep_status(results_dir: Path) -> Status:
    """The state of every run the records and the Slurm manifests of ``results_dir`` know."""
    root = Path(results_dir)
    runs: dict[Path, RunState] = {}
    for result in iter_records(root):
        detail = _detail(result.error or "", result.provenance.get("log"))
        runs[result.spec.record_path(root)] = RunState(result.spec, "done" if result.ok else "failed", detail)
    status = Status()
    for spec, state, job_id, log in _latest_jobs(root, status.notes):
        path = spec.record_path(root)
        kind = _kind(state)
        if kind in ("pending", "running"):
            runs[path] = RunState(spec, kind, f"job {job_id}")
        elif path in runs:
            continue  # the job finished: its record says how
        elif kind == "unknown":
            runs[path] = RunState(spec, "pending", f"job {job_id}, state unknown")
        else:
            reason = f"the Slurm job {job_id} ended without a record (state {state})"
            runs[path] = RunState(spec, "failed", _detail(reason, log))
    status.runs = list(runs.values())
    return status


def _detail(reason: str, log: object) -> str:
    return f"{reason} (log: {log})" if log and str(log) not in reason else reason


def _latest_jobs(root: Path, notes: list[str]) -> Iterable[tuple[RunSpec, str, str, str]]:
    """(spec, job state, job id, log) per record of each manifest, oldest sweep first (a
    later sweep's job for the same record wins)."""
    latest: dict[Path, tuple[RunSpec, str, str, str]] = {}
    for path in sorted((root / MANIFESTS).glob("*.json")):
        try:
            manifest = json.loads(path.read_text(encoding="utf-8"))
            jobs = manifest["jobs"]
            states = job_states(manifest["cluster"], Path(manifest["folder"]), [j["job_id"] for j in jobs])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            notes.append(f"Skipped the unreadable Slurm manifest {path} ({type(exc).__name__}: {exc}).")
            continue
        if any(state == "UNKNOWN" for state in states.values()):
            notes.append(_unknown_note(manifest["cluster"]))
        for job in jobs:
            for data in job["specs"]:
                spec = RunSpec.from_dict(data)
                latest[spec.record_path(root)] = (spec, states[job["job_id"]], job["job_id"], job["log"])
    notes[:] = list(dict.fromkeys(notes))
    return latest.values()


def _unknown_note(cluster: str) -> str:
    if cluster == "slurm" and shutil.which("sacct") is None:
        why = "sacct is not on this machine's PATH"
    else:
        why = "the job states could not be read"
    return f"Slurm job states unknown ({why}): runs without a record in those jobs count as pending."


def _kind(state: str) -> str:
    word = state.split()[0].upper() if state.strip() else "UNKNOWN"
    if word in _PENDING:
        return "pending"
    if word in _RUNNING:
        return "running"
    return "unknown" if word == "UNKNOWN" else "finished"


def job_states(cluster: str, folder: Path, job_ids: list[str]) -> dict[str, str]:
    """Each job's state: ``COMPLETED`` once its result is in the submitit folder; otherwise
    Slurm's state through submitit (``sacct``), or, for submitit's local executor, ``RUNNING``
    while its process lives and ``ENDED`` after."""
    states = {}
    unsettled = []
    for job_id in job_ids:
        if (folder / f"{job_id}_0_result.pkl").exists():
            states[job_id] = "COMPLETED"
        else:
            unsettled.append(job_id)
    if cluster == "local":
        states.update({job_id: "RUNNING" if _alive(job_id) else "ENDED" for job_id in unsettled})
    else:
        states.update(_slurm_states(folder, unsettled))
    return states


def _slurm_states(folder: Path, job_ids: list[str]) -> dict[str, str]:
    """Slurm's states of ``job_ids`` from one ``sacct`` call (submitit's watcher)."""
    if not job_ids:
        return {}
    try:
        import submitit
    except ImportError:
        return dict.fromkeys(job_ids, "UNKNOWN")
    if shutil.which("sacct") is None:
        return dict.fromkeys(job_ids, "UNKNOWN")
    jobs: list[Any] = [submitit.SlurmJob(folder=folder, job_id=job_id) for job_id in job_ids]
    return {job.job_id: str(job.state) for job in jobs}


def _alive(job_id: str) -> bool:
    """Whether the process of a local submitit job (its id is its pid) still runs."""
    try:
        pid = int(job_id)
        os.kill(pid, 0)
    except (ValueError, OSError):
        return False
    try:  # a finished child its parent has not reaped yet is a zombie, not a running job
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True
