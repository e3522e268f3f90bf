"""What reaches the terminal on everyday failure paths: paths holding brackets, a leaderboard
that cannot be written, records of a newer fewshot, a full cache disk, and what a refused or
listing command imports. Real commands on the toy world; a failure is provoked only where it
cannot be made for real (a full disk)."""

from __future__ import annotations

import errno
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

import fewshot.features
from fewshot.cli import app
from fewshot.codeid import _source_files
from fewshot.methods import METHODS
from fewshot.results import read_record
from fewshot.sweeps import sweep
from fewshot.types import RunSpec

from ._runs import newer_schema_record

cli = CliRunner()


def test_paths_with_brackets_print_as_they_are_in_list_and_data(tmp_path: Path) -> None:
    root = tmp_path / "x[/y] [bold]z[/bold]"
    listed = cli.invoke(app, ["list", "datasets", "--data-root", str(root)])
    assert listed.exit_code == 0 and "Traceback" not in listed.output, listed.output
    assert str(root) in listed.output.replace("\n", "")
    checked = cli.invoke(app, ["data", "check", "dtd", "--data-root", str(root)])
    assert "Traceback" not in checked.output
    assert checked.exception is None or isinstance(checked.exception, SystemExit)
    assert "[bold]z[/bold]" in checked.output.replace("\n", "")


def test_a_leaderboard_that_cannot_be_written_is_one_line(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    sweep([RunSpec("zeroshot", "toy-colors", shots=0, seed=1)], results_dir=runs)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the tables should go")
    out = cli.invoke(app, ["leaderboard", "--results", str(runs), "--out", str(blocked)])
    assert out.exit_code == 2 and "Traceback" not in out.output
    assert "The leaderboard folder" in out.output and "is a file" in out.output
    not_a_folder = cli.invoke(app, ["leaderboard", "--results", str(blocked)])
    assert not_a_folder.exit_code == 2 and "is a file, not a folder" in not_a_folder.output


def test_records_of_a_newer_fewshot_are_kept_and_said_so(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    path = newer_schema_record(runs)
    before = path.read_bytes()
    out = cli.invoke(
        app, ["run", "-m", "zeroshot", "-d", "toy-colors", "--seeds", "1", "--results", str(runs)]
    )
    text = out.output.replace("\n", " ")
    assert out.exit_code == 1 and "Traceback" not in text
    assert "schema version 99" in text and "written by a newer fewshot" in text
    assert "failure records" not in text  # none was written
    assert path.read_bytes() == before


def test_a_full_cache_disk_warns_once_and_the_runs_go_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full(path: Path, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(fewshot.features, "atomic_write_bytes", full)
    cache = fewshot.features.FeatureCache(tmp_path / "cache")
    specs = [RunSpec("linear-probe", "toy-colors", shots=1, seed=s) for s in (1, 2)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        results = sweep(specs, results_dir=tmp_path / "runs", cache=cache)
    assert all(r.ok for r in results), [r.error for r in results]
    assert all(read_record(s.record_path(tmp_path / "runs")).ok for s in specs)
    full_warnings = [w for w in caught if "is full" in str(w.message)]
    assert len(full_warnings) == 1 and "--cache-dir" in str(full_warnings[0].message)
    assert not list((tmp_path / "cache").rglob("*.pt"))


_IMPORTS = """
import sys
from fewshot.cli import main
try:
    main()
finally:
    found = sorted(m for m in ("torch", "torchvision", "open_clip", "sklearn") if m in sys.modules)
    print("loaded:", *found, file=sys.stderr)
"""


def _loaded(*args: str, tmp_path: Path) -> tuple[int, set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", _IMPORTS, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    line = next(x for x in done.stderr.splitlines() if x.startswith("loaded:"))
    return done.returncode, set(line.split()[1:])


def test_help_listing_and_refusals_do_not_load_the_model_libraries(tmp_path: Path) -> None:
    assert _loaded("--help", tmp_path=tmp_path) == (0, set())
    assert _loaded("list", "methods", tmp_path=tmp_path) == (0, set())
    code, loaded = _loaded(
        "run", "-m", "coop", "-d", "toy-colors", "--shots", "100000", "--results", "r", tmp_path=tmp_path
    )
    assert code == 2 and not loaded & {"torchvision", "open_clip", "sklearn"}


def test_the_code_digest_covers_the_toolkit_a_method_imports(tmp_path: Path) -> None:
    def files(method: str) -> set[str]:
        return {
            Path(p).relative_to(Path(fewshot.features.__file__).parent).as_posix()
            for p in _source_files(METHODS.get(method))
        }

    coop = files("coop")
    assert {"methods/coop.py", "methods/_training.py", "prompting/text.py", "prompting/_shared.py"} <= coop
    assert "methods/base.py" not in coop and "runner.py" not in coop
    assert {"methods/kgcoop.py", "methods/coop.py", "prompting/text.py"} <= files("kgcoop")
    assert not any(p.startswith("prompting/") for p in files("zeroshot"))
