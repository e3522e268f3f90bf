"""The Ray executor: each fit a Ray task (``fewshot run --executor ray``).

Each task runs :func:`fewshot.sweeps.execute_fit` with ``--cpus-per-run`` CPUs and
``--gpus-per-run`` GPUs. A task lost to a dead worker (the process killed, its node gone)
is retried up to ``max_retries`` times; an exception raised by the task is not retried (a run
that raises is already a failure record, written inside the worker). A task that is still lost
after its retries comes back as failure records that the driver writes, with the reason.

``address`` is passed to ``ray.init``: ``None`` starts a Ray instance on this machine for the
sweep (or joins ``$RAY_ADDRESS``), ``auto`` joins the cluster this machine belongs to,
``ray://HOST:10001`` a remote one through Ray Client. A Ray already initialised in this process
(a test, a notebook) is used as it is and left running. Workers write records and cache
entries themselves, so the results folder, the feature cache and the data root must be on a
filesystem every node sees; two workers computing one cache entry write the same bytes
atomically, so the entry is never corrupted.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fewshot.executors import FitProgress, import_extra
from fewshot.types import FewshotError

if TYPE_CHECKING:
    from fewshot.features import FeatureCache
    from fewshot.sweeps import FitJob, FitOutcome

__all__ = ["RayExecutor"]

WAIT_S = 1.0  # how long one wait for finished tasks blocks (Ctrl-C is seen between waits)


@dataclass
class RayExecutor:
    """Each fit a Ray task with these resources (see the module docstring)."""

    address: str | None = None
    gpus_per_run: float = 0
    cpus_per_run: float = 1
    max_retries: int = 3  # Ray's default for tasks: a task survives three dead workers

    name = "ray"
    in_process = False

    def require(self) -> None:
        import_extra("ray", "ray")

    def run(
        self, jobs: Sequence[FitJob], *, cache: FeatureCache, progress: FitProgress
    ) -> Generator[tuple[FitJob, FitOutcome], None, None]:
        from fewshot.sweeps import execute_fit

        ray = import_extra("ray", "ray")
        started = self._connect(ray)
        pending: dict[Any, FitJob] = {}
        try:
            self._check_resources(ray)
            task = ray.remote(
                num_cpus=self.cpus_per_run,
                num_gpus=self.gpus_per_run,
                max_retries=self.max_retries,
                retry_exceptions=False,
            )(execute_fit)
            pending = {task.remote(job): job for job in jobs}
            where = self.address or "a local Ray instance"
            while pending:
                progress.start(f"{len(pending)} fits on {where}")
                done, _ = ray.wait(list(pending), num_returns=1, timeout=WAIT_S)
                for ref in done:
                    job = pending.pop(ref)
                    yield job, self._outcome(ray, ref, job)
        finally:
            for ref in pending:  # closed early (Ctrl-C, a full disk): stop what still runs
                ray.cancel(ref)
            if started:
                ray.shutdown()

    def _connect(self, ray: Any) -> bool:
        """Join or start Ray; True when this call started it (it is shut down at the end)."""
        if ray.is_initialized():
            return False
        extra = {"include_dashboard": False} if self.address is None else {}
        try:
            ray.init(address=self.address, logging_level=logging.WARNING, **extra)
        except Exception as exc:  # every way of not reaching a cluster is the same to the user
            where = f"at {self.address}" if self.address else "on this machine"
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise FewshotError(
                f"Cannot start or reach Ray {where} ({reason}). Start a cluster with `ray start "
                "--head` and pass --address auto, or ray://HOST:10001 for a remote one."
            ) from None
        return True

    def _check_resources(self, ray: Any) -> None:
        """Warn when no node offers what one run asks for (its tasks would wait for one)."""
        total = ray.cluster_resources()
        for key, asked, option in (
            ("GPU", self.gpus_per_run, "--gpus-per-run"),
            ("CPU", self.cpus_per_run, "--cpus-per-run"),
        ):
            if asked and total.get(key, 0) < asked:
                warnings.warn(
                    f"The Ray cluster has {total.get(key, 0):g} {key}s and each run asks for {asked:g} "
                    f"({option}): the runs wait until a node that has them joins.",
                    stacklevel=2,
                )

    def _outcome(self, ray: Any, ref: Any, job: FitJob) -> FitOutcome:
        """The task's outcome; a task lost after its retries becomes failure records."""
        from fewshot.sweeps import lost_fit

        try:
            outcome: FitOutcome = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised outside the run (not retried)
            return lost_fit(job, f"the Ray task raised {_first_line(exc.cause or exc)}")
        except ray.exceptions.RayError as exc:  # its worker or node died, after every retry
            return lost_fit(job, f"lost on Ray after {self.max_retries} retries: {_first_line(exc)}")
        return outcome


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0]}" if text else type(exc).__name__
