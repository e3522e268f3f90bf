"""Executors: the local one (in this process), Ray (a local Ray instance the tests start) and
Slurm (submitit's local executor: the same jobs, pickles and folders, no Slurm) write the same
records; a worker killed mid-fit is retried by Ray; a Slurm job that raises or dies is recorded
as failed with its log; ``fewshot status`` counts done, failed, pending and running runs; two
processes writing one feature-cache entry never corrupt it; an executor whose extra is missing
fails with one line. Real sweeps on the toy world. The Ray and Slurm tests skip where
``fewshot[ray]`` / ``fewshot[slurm]`` is not installed (CI installs both)."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import pickle
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import fewshot
import fewshot.sweeps
from fewshot.cli import app
from fewshot.features import FeatureCache, FeatureKey
from fewshot.results import read_record, write_record
from fewshot.sweeps import FitJob, execute_fit, sweep
from fewshot.types import FeatureSet, RunResult, RunSpec

cli = CliRunner()

# The toy suite, zero-shot and a short CoOp: 4 zero-shot fits (k0) + 8 CoOp fits, one record each.
TOY_ARGS = ["-m", "zeroshot,coop", "--shots", "1,2", "--seeds", "1", "--set", "coop.epochs=3"]
TOY_RUNS = 12

# A nearest-class-mean method in a file, with hooks the tests switch on through ``HOOK``.
FILE_METHOD = """
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from fewshot.methods.base import Adapter, Needs
from fewshot.types import AdapterConfig

HOOK = {hook!r}
MARKER = Path({marker!r})
GATE = Path({gate!r})


@dataclass(frozen=True)
class CentroidConfig(AdapterConfig):
    scale: float = 10.0


class Centroid(Adapter):
    config_cls = CentroidConfig
    needs = Needs.FEATURES
    supports_novel = False

    def fit(self, ctx):
        if HOOK == "raise":
            raise RuntimeError("fit exploded [on purpose]")
        if HOOK == "die":
            os.kill(os.getpid(), signal.SIGKILL)  # as the kernel's OOM killer would
        if HOOK == "sleep-once" and ctx.seed == 1 and not MARKER.exists():
            MARKER.write_text(str(os.getpid()))  # first attempt: wait to be killed
            time.sleep(600)
        if HOOK == "gate":
            MARKER.write_text(str(os.getpid()))
            deadline = time.time() + 300
            while not GATE.exists() and time.time() < deadline:
                time.sleep(0.2)
        feats = F.normalize(ctx.train.features, dim=-1)
        self.means = torch.stack([feats[ctx.train.labels == c].mean(0) for c in range(len(ctx.classnames))])

    def predict(self, batch):
        return F.normalize(batch.features, dim=-1) @ self.means.t()
"""


def file_method(tmp_path: Path, hook: str = "", name: str = "centroid") -> str:
    path = tmp_path / f"{name}.py"
    marker, gate = tmp_path / f"{name}.marker", tmp_path / f"{name}.gate"
    path.write_text(FILE_METHOD.format(hook=hook, marker=str(marker), gate=str(gate)))
    return f"{path}:Centroid"


def records(root: Path) -> dict[str, dict[str, Any]]:
    """Every record under ``root`` (dot folders excluded), by path relative to it."""
    found = {}
    for path in sorted(root.rglob("*.json")):
        relative = path.relative_to(root)
        if not any(part.startswith(".") for part in relative.parts):
            found[str(relative)] = json.loads(path.read_text())
    return found


def assert_same_records(expected: dict[str, dict[str, Any]], got: dict[str, dict[str, Any]]) -> None:
    """One record per run, the same runs, the same accuracies and configs."""
    assert sorted(got) == sorted(expected)
    for name, record in got.items():
        want = expected[name]
        assert record["status"] == want["status"] == "ok", (name, record.get("error"))
        assert record["spec_hash"] == want["spec_hash"], name
        assert record["metrics"] == want["metrics"], name
        assert record["config"] == want["config"], name
        assert record["provenance"]["code_digest"] == want["provenance"]["code_digest"], name


def wait_for(condition: Callable[[], bool], timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def quiet() -> Console:
    return Console(file=io.StringIO())


@pytest.fixture(scope="module")
def local_records(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    """The records of the local executor on the toy suite (the reference)."""
    runs = tmp_path_factory.mktemp("local") / "runs"
    out = cli.invoke(app, ["run", *TOY_ARGS, "--results", str(runs)])
    assert out.exit_code == 0, out.output
    found = records(runs)
    assert len(found) == TOY_RUNS
    assert {r["provenance"]["executor"] for r in found.values()} == {"local"}
    return found


# ------------------------------------------------------------------------------------------
# The worker function and the feature cache


def test_the_worker_function_pickles_and_writes_as_the_sweep_does(tmp_path: Path) -> None:
    job = FitJob((RunSpec("zeroshot", "toy-colors", shots=0, seed=1),), tmp_path, None, tmp_path / "c")
    assert pickle.loads(pickle.dumps(execute_fit)) is execute_fit  # by reference: any worker imports it
    assert pickle.loads(pickle.dumps(job)) == job
    first = execute_fit(job, cache=FeatureCache(os.environ["FEWSHOT_CACHE"]))
    assert first.written == 1 and first.results[0].ok and first.disk_full is None
    path = job.todo[0].record_path(tmp_path)
    assert read_record(path).provenance["executor"] == "local"
    again = execute_fit(job, cache=FeatureCache(os.environ["FEWSHOT_CACHE"]))  # replaces: history first
    assert again.written == 1 and len(list((tmp_path / ".history").rglob("*.json"))) == 1


KEY = FeatureKey("toy", "w", "toy-colors", "1", "split", "items", "generated", "test")


def write_entry(root: str, rounds: int) -> None:
    """One writer of one cache entry (a spawned process; module level to be importable)."""
    cache = FeatureCache(root)
    features = torch.arange(64 * 32, dtype=torch.float32).reshape(64, 32)
    entry = FeatureSet(features, torch.arange(64) % 4, tuple(f"img{i}" for i in range(64)), "")
    for _ in range(rounds):
        cache.put(KEY, entry)


def test_two_writers_of_one_cache_entry_never_corrupt_it(tmp_path: Path) -> None:
    context = multiprocessing.get_context("spawn")
    writers = [context.Process(target=write_entry, args=(str(tmp_path), 40)) for _ in range(2)]
    for writer in writers:
        writer.start()
    reader, seen = FeatureCache(tmp_path), 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a corrupt entry is reported with a warning (and deleted)
        while any(w.is_alive() for w in writers):
            loaded = reader.load(KEY)
            if loaded is not None:
                seen += 1
                assert loaded.features[5, 7].item() == 5 * 32 + 7
    for writer in writers:
        writer.join()
        assert writer.exitcode == 0
    final = reader.load(KEY)
    assert final is not None and final.features.shape == (64, 32) and seen > 0
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]  # no temp file left


# ------------------------------------------------------------------------------------------
# The command line


@pytest.mark.parametrize(("executor", "module"), [("ray", "ray"), ("slurm", "submitit")])
def test_an_executor_without_its_extra_is_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, executor: str, module: str
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed
    runs = tmp_path / "runs"
    args = ["run", "-m", "zeroshot", "-d", "toy-colors", "--seeds", "1", "--results", str(runs)]
    out = cli.invoke(app, [*args, "--executor", executor])
    assert out.exit_code == 2
    assert [line for line in out.output.splitlines() if line.strip()] == [
        f"Error: --executor {executor} needs {module}, which is not installed: "
        f"pip install 'fewshot[{executor}]'."
    ]
    assert not runs.exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--address", "auto"], "--address applies to --executor ray only, not --executor local."),
        (["--executor", "ray", "--slurm-time", "5"], "--slurm-time applies to --executor slurm only"),
        (["--executor", "ray", "--no-cache"], "which ray workers cannot see: pass --cache-dir"),
        (["--executor", "slurm", "--slurm-opt", "mem"], "Bad --slurm-opt 'mem': write key=value"),
        (["--executor", "slurm", "--slurm-time", "0"], "--slurm-time takes an integer >= 1"),
        (["--executor", "dask"], "Unknown executor 'dask': use local, ray, slurm."),
    ],
)
def test_executor_options_are_checked_with_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    runs = tmp_path / "runs"
    out = cli.invoke(app, ["run", "-m", "zeroshot", "-d", "toy-colors", "--results", str(runs), *args])
    lines = [line for line in out.output.splitlines() if line.strip()]
    assert out.exit_code == 2 and len(lines) == 1 and message in lines[0], out.output
    assert not runs.exists()


def test_slurm_without_sbatch_is_one_line(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    out = cli.invoke(app, ["run", "-m", "zeroshot", "-d", "toy-colors", "--executor", "slurm"])
    assert out.exit_code == 2 and "submits with sbatch, which is not on this machine's PATH" in out.output


def test_slurm_options_reach_submitit(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    from fewshot.executors.slurm_jobs import SlurmExecutor

    calls: list[dict[str, Any]] = []

    def fake_sweep(plan: Any, **kwargs: Any) -> list[RunResult]:
        calls.append({"plan": plan, **kwargs})
        return [RunResult(s, metrics={"all": 50.0}) for s in plan.specs]

    monkeypatch.setattr(fewshot.sweeps, "sweep", fake_sweep)
    monkeypatch.setattr(SlurmExecutor, "require", lambda self: None)  # no Slurm on this machine
    options = ["--slurm-partition", "gpu", "--slurm-time", "30", "--gpus-per-run", "1"]
    options += ["--cpus-per-run", "4", "--slurm-array-parallelism", "8", "--slurm-opt", "mem=32G"]
    options += ["--slurm-opt", "account=lab", "--slurm-folder", str(tmp_path / "logs")]
    out = cli.invoke(app, ["run", "-m", "coop", "-d", "toy-colors", "--executor", "slurm", *options])
    assert out.exit_code == 0, out.output
    (call,) = calls
    executor = call["executor"]
    assert isinstance(executor, SlurmExecutor) and executor.folder == tmp_path / "logs"
    assert executor.parameters() == {
        "name": "fewshot",
        "timeout_min": 30,
        "cpus_per_task": 4,
        "gpus_per_node": 1,
        "stderr_to_stdout": True,
        "slurm_array_parallelism": 8,
        "slurm_partition": "gpu",
        "slurm_additional_parameters": {"mem": "32G", "account": "lab"},
    }
    # GPU workers: --device auto plans cuda runs (fp16 autocast), whatever this machine has.
    assert {(s.device, s.precision) for s in call["plan"].specs} == {("cuda", "fp16")}


# ------------------------------------------------------------------------------------------
# Ray


@pytest.fixture(scope="module")
def ray_instance() -> Iterator[Any]:
    """A local Ray instance for this module's Ray tests; the executor joins it."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    yield ray
    ray.shutdown()


def test_ray_writes_the_records_of_the_local_executor_and_a_rerun_skips_them(
    ray_instance: Any, local_records: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    runs = tmp_path / "runs"
    args = ["run", *TOY_ARGS, "--executor", "ray", "--results", str(runs)]
    out = cli.invoke(app, args)
    assert out.exit_code == 0, out.output
    assert out.output.count(": all ") == TOY_RUNS  # each run's line, streamed as its fit finished
    assert "Summary (mean over seeds)" in out.output
    got = records(runs)
    assert_same_records(local_records, got)
    assert {r["provenance"]["executor"] for r in got.values()} == {"ray"}
    assert {r["provenance"]["command"].split()[0] for r in got.values()} != {"default_worker.py"}
    stamps = {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")}
    again = cli.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert again.output.count("recorded, skipped") == TOY_RUNS
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("*.json")} == stamps  # nothing rewritten


def test_a_killed_ray_worker_is_retried_without_duplicate_or_lost_records(
    ray_instance: Any, tmp_path: Path
) -> None:
    from fewshot.executors.ray_tasks import RayExecutor

    method = file_method(tmp_path, "sleep-once")
    marker = tmp_path / "centroid.marker"
    specs = [RunSpec(method, "toy-colors", shots=2, seed=s) for s in (1, 2)]
    specs.append(RunSpec("zeroshot", "toy-colors", shots=0, seed=1))
    killed: list[int] = []

    def kill_first_attempt() -> None:
        wait_for(lambda: marker.exists() and marker.read_text().strip() != "")
        killed.append(int(marker.read_text()))
        os.kill(killed[0], signal.SIGKILL)

    killer = threading.Thread(target=kill_first_attempt, daemon=True)
    killer.start()
    runs = tmp_path / "runs"
    results = sweep(specs, results_dir=runs, console=quiet(), executor=RayExecutor())
    killer.join(timeout=5)
    assert killed, "the first attempt never started"
    assert [r.ok for r in results] == [True, True, True], [r.error for r in results]
    assert sorted(records(runs)) == sorted(str(s.record_path(runs).relative_to(runs)) for s in specs)
    assert not (runs / ".history").exists()  # the lost attempt wrote nothing, the retry once


# ------------------------------------------------------------------------------------------
# Slurm, through submitit's local executor


@pytest.fixture
def slurm_local() -> Any:
    pytest.importorskip("submitit")
    from fewshot.executors.slurm_jobs import SlurmExecutor

    return SlurmExecutor(cluster="local", poll_s=0.2)


def status_rows(output: str) -> dict[str, list[str]]:
    """``fewshot status`` table rows: first cell -> the other cells."""
    rows = {}
    for line in output.splitlines():
        cells = [c.strip() for c in line.strip("│┃ ").split("│")]
        if len(cells) == 6:
            rows[f"{cells[0]} {cells[1]}".strip()] = cells[2:]
    return rows


def test_slurm_jobs_write_the_records_of_the_local_executor(
    slurm_local: Any, local_records: dict[str, dict[str, Any]], tmp_path: Path
) -> None:
    datasets = ("toy-colors", "toy-shapes")
    plan = fewshot.plan("zeroshot,coop", datasets, shots=[1, 2], seeds=[1], sets=["coop.epochs=3"])
    runs = tmp_path / "runs"
    results = sweep(plan, results_dir=runs, console=quiet(), executor=slurm_local)
    assert len(results) == 6 and all(r.ok for r in results), [r.error for r in results]
    expected = {k: v for k, v in local_records.items() if k.startswith(datasets)}
    got = records(runs)
    assert_same_records(expected, got)
    (folder,) = (tmp_path / "slurm-logs").iterdir()  # beside the results, one per sweep
    logs = {r["provenance"]["log"] for r in got.values()}
    assert len(logs) == 6 and all(Path(log).parent == folder and Path(log).is_file() for log in logs)
    (manifest,) = (runs / ".slurm").glob("*.json")
    assert json.loads(manifest.read_text())["folder"] == str(folder)
    again = sweep(plan, results_dir=runs, console=quiet(), executor=slurm_local)
    assert [r.provenance["log"] for r in again] == [r.provenance["log"] for r in results]  # all skipped
    assert len(list((tmp_path / "slurm-logs").iterdir())) == 1  # nothing submitted
    out = cli.invoke(app, ["status", str(runs)])
    assert out.exit_code == 0, out.output
    assert status_rows(out.output)["total"] == ["6", "0", "0", "0"]


def test_a_slurm_job_that_raises_or_dies_is_a_failure_record_with_its_log(
    slurm_local: Any, tmp_path: Path
) -> None:
    raising, dying = file_method(tmp_path, "raise", "raising"), file_method(tmp_path, "die", "dying")
    specs = [RunSpec(m, "toy-colors", shots=1, seed=1) for m in (raising, dying)]
    specs.append(RunSpec("zeroshot", "toy-colors", shots=0, seed=1))
    runs = tmp_path / "runs"
    raised, died, ok = sweep(specs, results_dir=runs, console=quiet(), executor=slurm_local)
    assert ok.ok
    assert not raised.ok and "RuntimeError: fit exploded [on purpose]" in (raised.error or "")
    assert not died.ok and "ended without a result" in (died.error or "")
    for result in (raised, died):
        record = read_record(result.spec.record_path(runs))  # written: by the job, by the driver
        assert not record.ok and Path(record.provenance["log"]).is_file()
    assert died.provenance["log"] in (died.error or "")
    out = cli.invoke(app, ["status", str(runs)])
    assert out.exit_code == 0, out.output
    rows = status_rows(out.output)
    assert rows["total"] == ["1", "2", "0", "0"] and rows["zeroshot toy-colors"] == ["1", "0", "0", "0"]
    text = " ".join(out.output.split())
    assert "fit exploded [on purpose]" in text  # printed as it is, never as markup
    assert f"(log: {raised.provenance['log']})" in text and died.provenance["log"] in text


def test_status_shows_a_slurm_job_that_is_still_running(slurm_local: Any, tmp_path: Path) -> None:
    method = file_method(tmp_path, "gate")
    specs = [
        RunSpec(method, "toy-colors", shots=1, seed=1),
        RunSpec("zeroshot", "toy-colors", shots=0, seed=1),
    ]
    runs, done = tmp_path / "runs", []
    worker = threading.Thread(
        target=lambda: done.extend(sweep(specs, results_dir=runs, console=quiet(), executor=slurm_local))
    )
    worker.start()
    try:
        wait_for(lambda: (tmp_path / "centroid.marker").exists() and specs[1].record_path(runs).exists())
        wait_for(lambda: any((runs / ".slurm").glob("*.json")))
        rows = status_rows(cli.invoke(app, ["status", str(runs)]).output)
        assert rows["total"] == ["1", "0", "0", "1"], rows  # zero-shot done, the gated one running
    finally:
        (tmp_path / "centroid.gate").touch()
        worker.join(timeout=300)
    assert [r.ok for r in done] == [True, True]
    assert status_rows(cli.invoke(app, ["status", str(runs)]).output)["total"] == ["2", "0", "0", "0"]


def test_status_reads_pending_and_running_from_slurm(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pytest.importorskip("submitit")
    runs, logs = tmp_path / "runs", tmp_path / "logs"
    specs = [RunSpec("coop", "toy-colors", shots=16, seed=s) for s in (1, 2, 3, 4)]
    write_record(RunResult(specs[0], metrics={"all": 50.0}), specs[0].record_path(runs))
    jobs = [
        {"job_id": f"4242_{i}", "log": str(logs / f"4242_{i}_0_log.out"), "specs": [s.to_dict()]}
        for i, s in enumerate(specs)
    ]
    manifest = {"sweep": "s", "cluster": "slurm", "folder": str(logs), "jobs": jobs}
    (runs / ".slurm").mkdir()
    (runs / ".slurm" / "s.json").write_text(json.dumps(manifest))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))  # no sacct: states unknown
    unknown = cli.invoke(app, ["status", str(runs)])
    assert "sacct is not on this machine's PATH" in unknown.output
    assert status_rows(unknown.output)["total"] == ["1", "0", "3", "0"]
    sacct = tmp_path / "bin" / "sacct"
    sacct.parent.mkdir()
    sacct.write_text(
        "#!/bin/sh\nprintf 'JobID|State|NodeList\\n4242_0|COMPLETED|n1\\n4242_1|PENDING|\\n"
        "4242_2|RUNNING|n7\\n4242_3|OUT_OF_MEMORY|n7\\n'\n"
    )
    sacct.chmod(0o755)
    out = cli.invoke(app, ["status", str(runs)])
    assert status_rows(out.output)["total"] == ["1", "1", "1", "1"], out.output
    text = " ".join(out.output.split())
    assert "the Slurm job 4242_3 ended without a record (state OUT_OF_MEMORY)" in text
    assert str(logs / "4242_3_0_log.out") in text
