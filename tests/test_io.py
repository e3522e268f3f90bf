"""Atomic writes (fewshot._io): new files and folders follow the umask, as open() and mkdir() do."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from fewshot._io import atomic_write, atomic_write_bytes, atomic_write_text
from fewshot.leaderboard import build_leaderboard, write_leaderboard
from fewshot.results import write_record
from fewshot.types import RunResult, RunSpec

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")


@pytest.fixture
def umask() -> Iterator[Callable[[int], None]]:
    """Set the process umask for one test; the old one is restored afterwards."""
    old = os.umask(0o022)
    try:
        yield os.umask
    finally:
        os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _record(path: Path) -> None:
    write_record(RunResult(RunSpec("coop", "toy-shapes", shots=4, seed=1), metrics={"all": 50.0}), path)


WRITERS: dict[str, Callable[[Path], None]] = {
    "atomic_write_text": lambda p: atomic_write_text(p, "text\n"),
    "atomic_write_bytes": lambda p: atomic_write_bytes(p, b"\x00\x01"),
    "atomic_write": lambda p: atomic_write(p, lambda fh: fh.write("streamed")),
    "atomic_write binary": lambda p: atomic_write(p, lambda fh: fh.write(b"raw"), binary=True),
    "write_record": _record,
}


@pytest.mark.parametrize(("mask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)])
@pytest.mark.parametrize("writer", list(WRITERS))
def test_new_files_and_folders_follow_the_umask(
    tmp_path: Path, umask: Callable[[int], None], writer: str, mask: int, file_mode: int, dir_mode: int
) -> None:
    umask(mask)
    path = tmp_path / "new" / "folder" / "file.json"
    WRITERS[writer](path)
    assert _mode(path) == file_mode
    assert _mode(path.parent) == dir_mode and _mode(path.parent.parent) == dir_mode
    assert sorted(p.name for p in path.parent.iterdir()) == ["file.json"]  # no temp file left


def test_a_replaced_file_gets_the_umask_mode_not_the_old_one(
    tmp_path: Path, umask: Callable[[int], None]
) -> None:
    path = tmp_path / "file.txt"
    path.write_text("old")
    path.chmod(0o600)
    umask(0o022)
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and _mode(path) == 0o644


def test_leaderboard_files_follow_the_umask(tmp_path: Path, umask: Callable[[int], None]) -> None:
    umask(0o022)
    runs = tmp_path / "runs"
    spec = RunSpec("coop", "toy-shapes", shots=4, seed=1)
    _record(spec.record_path(runs))
    paths = write_leaderboard(build_leaderboard(runs), tmp_path / "board")
    assert [(p.name, _mode(p)) for p in paths] == [("leaderboard.csv", 0o644), ("LEADERBOARD.md", 0o644)]
