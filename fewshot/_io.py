"""Atomic file writes, shared by records, feature-cache entries and stored subsets.

Write to a temp file in the target's folder, fsync, then ``os.replace`` over the target: a
reader sees the old file or the new one, never a partial one, and a failure at any point
removes the temp file and leaves an existing target untouched.

Files get the mode any ``open(path, "w")`` gives them: ``0o666`` minus the process umask (and
a folder's default ACL, where it has one), so a lab's shared data root stays shared. The temp
file is created with ``os.open(..., 0o666)`` and the kernel applies the umask: the umask is
never read, so no other thread can see it changed (``tempfile.mkstemp`` would create 0o600).
Folders are created with ``mkdir``'s default, ``0o777`` minus the umask.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "ensure_writable_dir"]


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every OS (Windows), hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_TEMP_ATTEMPTS = 100


def _create_temp(path: Path) -> tuple[int, str]:
    """Create a new, empty ``.<name>.<random>.tmp`` beside ``path``; return (fd, its path).

    Mode 0o666 minus the umask, as the kernel applies it; ``O_EXCL`` never reuses a file.
    """
    for _ in range(_TEMP_ATTEMPTS):
        name = os.path.join(path.parent, f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(name, _TEMP_FLAGS, 0o666), name
        except FileExistsError:
            continue
    raise FileExistsError(f"No free temporary file name for {path} after {_TEMP_ATTEMPTS} attempts.")


def atomic_write(path: Path, write: Callable[[IO[Any]], object], *, binary: bool = False) -> None:
    """Call ``write(fh)`` on a temp file beside ``path``, fsync, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Same directory, so os.replace is a rename within one filesystem (atomic).
    fd, tmp_name = _create_temp(path)
    try:
        mode = {"mode": "wb"} if binary else {"mode": "w", "encoding": "utf-8", "newline": "\n"}
        with os.fdopen(fd, **mode) as fh:  # type: ignore[call-overload]
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(text))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    atomic_write(path, lambda fh: fh.write(data), binary=True)


def ensure_writable_dir(path: Path, what: str, fix: str) -> None:
    """Create ``path`` if needed and check that files can be written in it; otherwise raise
    one :class:`~fewshot.types.FewshotError` line naming ``what``, the path and ``fix``."""
    from fewshot.types import FewshotError

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FewshotError(f"{what} {path} is a file, not a folder: {fix}.")
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd, name = _create_temp(path / "write-check")
        os.close(fd)
        os.unlink(name)
    except OSError as exc:
        raise FewshotError(f"{what} {path} is not writable ({exc.strerror or exc}): {fix}.") from None
