"""Trust in everyday use: stale results, write failures, bad paths, bounds, interruptions and
what reaches the terminal. Real sweeps on the toy world; nothing of fewshot is mocked except
where a failure has to be provoked (a full disk, a Ctrl-C)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fewshot.results
import fewshot.runner
from fewshot.cli import app
from fewshot.leaderboard import build_leaderboard
from fewshot.results import read_record
from fewshot.sweeps import sweep
from fewshot.types import RunSpec

from ._runs import newer_schema_record

cli = CliRunner()

FILE_METHOD = '''
from dataclasses import dataclass
import torch
import torch.nn.functional as F
from fewshot.methods.base import Adapter, Needs
from fewshot.types import AdapterConfig


@dataclass(frozen=True)
class CentroidConfig(AdapterConfig):
    scale: float = 10.0


class Centroid(Adapter):
    """Nearest class mean of the support features."""

    config_cls = CentroidConfig
    needs = Needs.FEATURES
    supports_novel = False

    def fit(self, ctx):
        feats = F.normalize(ctx.train.features, dim=-1)
        self.means = torch.stack([feats[ctx.train.labels == c].mean(0) for c in range(len(ctx.classnames))])

    def predict(self, batch):
        return SCALE * F.normalize(batch.features, dim=-1) @ self.means.t()


SCALE = 1.0  # a comment
'''


def _method(tmp_path: Path, source: str = FILE_METHOD) -> str:
    path = tmp_path / "centroid.py"
    path.write_text(source)
    return f"{path}:Centroid"


def _sweep(tmp_path: Path, method: str, **kwargs: object) -> list:
    specs = [RunSpec(method, "toy-colors", shots=2, seed=s) for s in (1, 2)]
    return sweep(specs, results_dir=tmp_path / "runs", **kwargs)  # type: ignore[arg-type]


def _history(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "runs" / ".history").rglob("*.json"))


# ------------------------------------------------------------------------------------------
# Code identity and staleness


def test_editing_a_method_reruns_it_and_keeps_the_old_record_in_history(tmp_path: Path) -> None:
    method = _method(tmp_path)
    first = _sweep(tmp_path, method)
    digest = first[0].provenance["code_digest"]
    assert digest and all(r.ok for r in first)
    # A comment or a docstring is not code: nothing reruns, nothing moves to history.
    _method(
        tmp_path, FILE_METHOD.replace("# a comment", "# another comment").replace("Nearest", "The nearest")
    )
    again = _sweep(tmp_path, method)
    assert [r.provenance["date"] for r in again] == [r.provenance["date"] for r in first]
    assert _history(tmp_path) == []
    # A change of behaviour makes both records stale: rerun, the old ones kept in history.
    _method(tmp_path, FILE_METHOD.replace("SCALE = 1.0", "SCALE = 2.0"))
    edited = _sweep(tmp_path, method)
    assert {r.provenance["code_digest"] for r in edited} != {digest}
    history = _history(tmp_path)
    assert len(history) == 2 and {
        json.loads(p.read_text())["provenance"]["code_digest"] for p in history
    } == {digest}
    assert read_record(edited[0].spec.record_path(tmp_path / "runs")).provenance["code_digest"] != digest


def test_force_reruns_everything_and_no_rerun_stale_keeps_old_records(tmp_path: Path) -> None:
    method = _method(tmp_path)
    first = _sweep(tmp_path, method)
    forced = _sweep(tmp_path, method, rerun="all")
    assert all(r.ok for r in forced) and len(_history(tmp_path)) == 2  # both rerun, both kept
    assert sorted(json.loads(p.read_text())["spec"]["seed"] for p in _history(tmp_path)) == [1, 2]
    _method(tmp_path, FILE_METHOD.replace("SCALE = 1.0", "SCALE = 3.0"))
    kept = _sweep(tmp_path, method, rerun="none")
    assert [r.provenance["code_digest"] for r in kept] == [r.provenance["code_digest"] for r in first]
    assert len(_history(tmp_path)) == 2  # nothing replaced
    out = cli.invoke(app, ["run", "-m", method, "-d", "toy-colors", "--force", "--no-rerun-stale"])
    assert out.exit_code == 2 and "give one of them" in out.output


def test_the_leaderboard_never_averages_seeds_of_different_code(tmp_path: Path) -> None:
    method = _method(tmp_path)
    _sweep(tmp_path, method)
    _method(tmp_path, FILE_METHOD.replace("SCALE = 1.0", "SCALE = 5.0"))
    runs = tmp_path / "runs"
    spec = RunSpec(method, "toy-colors", shots=2, seed=3)
    sweep([spec], results_dir=runs)  # seed 3 by the edited code, seeds 1-2 by the old
    with pytest.warns(UserWarning, match=r"seeds come from 2 versions of the method's code"):
        lb = build_leaderboard(runs)
    seeds = lb.cells[(lb.cells["kind"] == "seeds") & (lb.cells["dataset"] == "toy-colors")]
    assert sorted(seeds["n"].tolist()) == [1.0, 2.0] and seeds["conflict"].all()


# ------------------------------------------------------------------------------------------
# Writes that fail


def test_a_results_path_that_is_a_file_is_one_line(tmp_path: Path) -> None:
    blocker = tmp_path / "runs"
    blocker.write_text("not a folder")
    out = cli.invoke(
        app, ["run", "-m", "zeroshot", "-d", "toy-colors", "--seeds", "1", "--results", str(blocker)]
    )
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "is a file, not a folder" in out.output and blocker.read_text() == "not a folder"


def test_a_folder_at_a_records_path_fails_that_run_only(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    specs = [RunSpec("zeroshot", "toy-colors", shots=1, seed=s) for s in (1, 2)]
    specs[0].record_path(runs).mkdir(parents=True)  # a folder where seed 1's record goes
    results = sweep(specs, results_dir=runs)
    assert not results[0].ok and "is a folder: move it away" in (results[0].error or "")
    assert results[1].ok and read_record(specs[1].record_path(runs)).ok


def test_a_full_disk_stops_with_one_line_and_keeps_what_was_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runs = tmp_path / "runs"
    real_write, written = fewshot.results.write_record, []

    def fill_up(result, path):  # the second record finds the disk full
        if written:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real_write(result, path)
        written.append(path)

    monkeypatch.setattr("fewshot.sweeps.write_record", fill_up)
    out = cli.invoke(
        app, ["run", "-m", "zeroshot", "-d", "toy-colors", "--seeds", "1,2", "--results", str(runs)]
    )
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "disk is full" in out.output and "1 records of this sweep" in out.output.replace("\n", " ")
    assert read_record(written[0]).ok  # intact


def test_a_record_of_a_newer_schema_is_never_overwritten(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    path = newer_schema_record(runs)
    before = path.read_bytes()
    (again,) = sweep([RunSpec("zeroshot", "toy-colors", shots=0, seed=1)], results_dir=runs)
    assert not again.ok and "schema version 99" in (again.error or "")
    assert path.read_bytes() == before


def test_a_failure_reason_with_brackets_is_printed_as_it_is(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args, **kwargs):
        raise RuntimeError("cannot read [/data/x] [bold]")

    monkeypatch.setattr(fewshot.runner, "run_fit", broken)
    out = cli.invoke(
        app, ["run", "-m", "zeroshot", "-d", "toy-colors", "--seeds", "1", "--results", str(tmp_path)]
    )
    assert out.exit_code == 1 and "Traceback" not in out.output
    assert "cannot read [/data/x] [bold]" in out.output


# ------------------------------------------------------------------------------------------
# Caches and bounds


def test_an_unusable_cache_is_one_error_up_front_and_no_cache_runs(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache should be")
    args = ["run", "-m", "zeroshot", "-d", "toy-colors", "--seeds", "1", "--results", str(tmp_path / "runs")]
    out = cli.invoke(app, [*args, "--cache-dir", str(cache)])
    assert out.exit_code == 2 and "The feature cache" in out.output and "--no-cache" in out.output
    assert not list((tmp_path / "runs").rglob("*.json"))
    ok = cli.invoke(app, [*args, "--cache-dir", str(cache), "--no-cache"])
    assert ok.exit_code == 0, ok.output
    assert len(list((tmp_path / "runs").rglob("*.json"))) == 1


def test_too_many_shots_are_refused_quickly_naming_the_largest_usable_value(tmp_path: Path) -> None:
    start = time.perf_counter()
    out = cli.invoke(
        app, ["run", "-m", "coop", "-d", "toy-colors", "--shots", "100000", "--results", str(tmp_path)]
    )
    assert time.perf_counter() - start < 5
    assert (
        out.exit_code == 2 and "--shots 100000" in out.output and "the largest usable value is" in out.output
    )
    assert not list(tmp_path.rglob("*.json")) and not list(tmp_path.rglob("subsets"))


# ------------------------------------------------------------------------------------------
# The terminal


def test_interrupting_a_sweep_says_what_was_saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real, calls = fewshot.runner.run_fit, []

    def interrupted(specs, **kwargs):
        calls.append(specs)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(specs, **kwargs)

    monkeypatch.setattr(fewshot.runner, "run_fit", interrupted)
    runs = tmp_path / "runs"
    out = cli.invoke(
        app, ["run", "-m", "zeroshot", "-d", "toy-colors", "--seeds", "1,2", "--results", str(runs)]
    )
    assert out.exit_code == 130
    assert "Interrupted: 1 records of this sweep were written" in out.output.replace("\n", " ")
    assert "Rerun the same command to resume" in out.output.replace("\n", " ")


def test_warnings_print_as_one_line_through_the_cli(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    spec = RunSpec("zeroshot", "toy-colors", shots=0, seed=1)
    damaged = spec.record_path(runs)
    damaged.parent.mkdir(parents=True)
    damaged.write_text("{ not json")
    env = {**os.environ, "FEWSHOT_CACHE": str(tmp_path / "cache")}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from fewshot.cli import main; main()",
            "run",
            "-m",
            "zeroshot",
            "-d",
            "toy-colors",
            "--seeds",
            "1",
            "--results",
            str(runs),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    warning_lines = [line for line in done.stderr.splitlines() if "not valid JSON" in line]
    assert len(warning_lines) == 1 and warning_lines[0].startswith("Warning: ")
    assert "warnings.warn" not in done.stderr and "UserWarning" not in done.stderr


def test_records_say_what_ran_where(tmp_path: Path) -> None:
    (result,) = sweep([RunSpec("zeroshot", "toy-colors", shots=0, seed=1)], results_dir=tmp_path)
    prov = result.provenance
    assert prov["precision"] == "fp32" and prov["command"] and prov["code_digest"]
    assert {"cuda", "cudnn", "gpu", "driver"} <= set(prov)  # None on a CPU machine


def test_completion_is_offered() -> None:
    out = cli.invoke(app, ["--help"])
    assert "--install-completion" in out.output


def test_a_run_on_a_generated_split_says_so_when_it_starts(tmp_path: Path) -> None:
    """DTD without CoOp's split file: fewshot generates one, and the run warns as it starts."""
    from . import _fake_trees as trees

    trees.dtd(tmp_path / "data", split=False)
    spec = RunSpec("zeroshot", "dtd", shots=0, seed=1)
    with pytest.warns(
        UserWarning, match="no official split file here: this run uses a split fewshot generated"
    ):
        (result,) = sweep([spec], results_dir=tmp_path / "runs", data_root=tmp_path / "data")
    assert result.ok and result.provenance["split_source"] == "generated"


def test_bracketed_text_reaches_the_terminal_as_it_is(tmp_path: Path) -> None:
    """Rich markup is never read from data: a variant like coop[epochs=2] and bracketed parts
    of an error print verbatim."""
    runs = tmp_path / "runs"
    out = cli.invoke(
        app,
        [
            "run",
            "-m",
            "coop",
            "-d",
            "toy-colors",
            "--shots",
            "1",
            "--seeds",
            "1",
            "--set",
            "epochs=2",
            "--results",
            str(runs),
        ],
    )
    assert out.exit_code == 0, out.output
    assert "coop[epochs=2]" in out.output
    bad = cli.invoke(app, ["run", "-m", "coop", "-d", "[bold]toy", "--results", str(runs)])
    assert bad.exit_code == 2 and "'[bold]toy'" in bad.output
