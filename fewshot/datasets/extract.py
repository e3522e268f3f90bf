"""Safe archive extraction for the dataset installer (:mod:`fewshot.datasets.download`).

:func:`extract_archive` extracts a .tar(.gz/.bz2/.xz), .tgz or .zip: members that would land
outside the destination are refused, tar members go through tarfile's ``data`` filter, and
an archive that would expand past :class:`ExtractLimits` (total bytes, bytes per archive
byte) is refused from its member headers before anything is written, and again while
writing, in case the headers lie.
"""

from __future__ import annotations

import gzip
import lzma
import re
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fewshot.datasets.base import DatasetError

__all__ = [
    "MAX_EXTRACT_BYTES",
    "MAX_EXTRACT_RATIO",
    "DownloadError",
    "ExtractLimitError",
    "ExtractLimits",
    "extract_archive",
]


class DownloadError(DatasetError):
    """A download, checksum or extraction failed; the message names the file and the fix."""


class ExtractLimitError(DownloadError):
    """An archive would expand past an :class:`ExtractLimits` limit; nothing of it is extracted."""


# ------------------------------------------------------------------------------------------
# Extraction: safe, into a staging folder

_ARCHIVE_ERRORS = (
    tarfile.TarError,
    zipfile.BadZipFile,
    EOFError,
    zlib.error,
    gzip.BadGzipFile,
    lzma.LZMAError,
)
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")

# Limits on what one archive may expand to (decompression bombs). The recipes carry no
# uncompressed sizes, so these are global. The biggest datasets hold JPEGs, which do not
# compress further: ImageNet's train tar is 138 GB and expands to about as much, Places365's
# train tar ~105 GB, SUN397's 39 GB tar.gz ~40 GB. MAX_EXTRACT_BYTES, 2 TB, is over ten times
# the biggest, so no real dataset nears it, yet it bounds what an archive may write. Real
# archives expand about 1:1 (images) and at most ~10:1 (split lists, annotations, devkits);
# deflate reaches ~1000:1 and bzip2/xz far more on repeated bytes. MAX_EXTRACT_RATIO, 200:1,
# is twenty times the most compressible real archive and bounds a bomb to 200 times its
# download (the 40 MB archive that expanded 1025:1 is refused before anything is written).
MAX_EXTRACT_BYTES = 2 * 10**12
MAX_EXTRACT_RATIO = 200.0


@dataclass(frozen=True)
class ExtractLimits:
    """Most bytes an archive may expand to, in total and per byte of archive (the ratio)."""

    max_total_bytes: int
    max_ratio: float

    @classmethod
    def default(cls) -> ExtractLimits:
        """The module's MAX_EXTRACT_BYTES and MAX_EXTRACT_RATIO, as they are at call time."""
        return cls(MAX_EXTRACT_BYTES, MAX_EXTRACT_RATIO)


class _Budget:
    """A running total of the bytes an archive expands to; raises at the first one too many.

    ``sizes`` remembers each member's size, so that a hard link (which tarfile copies where
    the filesystem has none) counts as much as its target.
    """

    def __init__(self, archive: Path, limits: ExtractLimits, verb: str) -> None:
        self.archive, self.limits, self.verb = archive, limits, verb
        self.size = max(archive.stat().st_size, 1)
        self.total = 0
        self.sizes: dict[str, int] = {}

    def charge(self, nbytes: int) -> None:
        self.total += nbytes
        limits, name, total = self.limits, self.archive.name, self.total
        if total > limits.max_total_bytes:
            why = f"max_total_bytes = {limits.max_total_bytes:,}"
            raise _too_big(name, f"its members {self.verb} over {total:,} bytes, past the limit {why}")
        if total > limits.max_ratio * self.size:
            ratio = f"{total / self.size:,.1f}:1 ({total:,} bytes from {self.size:,})"
            why = f"max_ratio = {limits.max_ratio:g}:1"
            raise _too_big(name, f"its members {self.verb} over {ratio}, past the limit {why}")

    def charge_tar(self, member: tarfile.TarInfo) -> None:
        size = member.size if member.isreg() else 0
        if member.islnk():
            size = self.sizes.get(member.linkname, 0)
        self.sizes[member.name] = size
        self.charge(size)


def _too_big(name: str, what: str) -> ExtractLimitError:
    return ExtractLimitError(
        f"Refusing {name}: {what} (a guard against decompression bombs); the archive is not what "
        "the recipe expects. If you trust it, raise the limit: ExtractLimits(...) as limits= of "
        "download_dataset / extract_archive, or fewshot.datasets.extract.MAX_EXTRACT_BYTES / "
        "MAX_EXTRACT_RATIO."
    )


def extract_archive(archive: Path, dest: Path, *, limits: ExtractLimits | None = None) -> None:
    """Extract a .tar(.gz/.bz2/.xz), .tgz or .zip into ``dest``.

    Members that would land outside ``dest`` (absolute paths, ``..``, links pointing outside)
    are refused with a DownloadError; so is a corrupt archive. An archive whose member headers
    add up past ``limits`` (default :meth:`ExtractLimits.default`) is refused with an
    ExtractLimitError before anything is written; the bytes written are counted again while
    extracting. ``dest`` may then hold part of the archive: callers extract into a staging
    folder they delete.
    """
    if not hasattr(tarfile, "data_filter"):
        raise DownloadError("Extracting archives safely needs Python 3.11.4 or newer: upgrade Python.")
    name = archive.name.lower()
    limits = limits or ExtractLimits.default()
    dest.mkdir(parents=True, exist_ok=True)
    try:
        if name.endswith(".zip"):
            _extract_zip(archive, dest, limits)
        elif name.endswith(_TAR_SUFFIXES):
            _extract_tar(archive, dest, limits)
        else:
            raise DownloadError(
                f"Unknown archive type: {archive.name} (expected .tar, .tar.gz, .tgz or .zip)."
            )
    except tarfile.FilterError as exc:
        raise _unsafe(archive, exc.tarinfo.name, str(exc)) from None
    except _ARCHIVE_ERRORS as exc:
        raise DownloadError(
            f"{archive.name} cannot be extracted ({type(exc).__name__}: {exc}): the archive is "
            "truncated or corrupt."
        ) from None


def _unsafe(archive: Path, member: str, why: str) -> DownloadError:
    return DownloadError(
        f"Refusing {archive.name}: member {member!r} would be written outside the dataset folder "
        f"({why}). The archive is not what the recipe expects; do not extract it by hand."
    )


def _check_member(archive: Path, name: str) -> None:
    text = name.replace("\\", "/")
    if text.startswith("/") or re.match(r"[A-Za-z]:", text) or ".." in text.split("/"):
        raise _unsafe(archive, name, "absolute path or '..'")


def _tar_filter(archive: Path, budget: _Budget) -> Callable[[tarfile.TarInfo, str], tarfile.TarInfo | None]:
    def check(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo | None:
        _check_member(archive, member.name)
        budget.charge_tar(member)  # tarfile writes exactly member.size bytes: this counts the writes
        return tarfile.data_filter(member, dest)

    return check


def _extract_tar(archive: Path, dest: Path, limits: ExtractLimits) -> None:
    with tarfile.open(archive) as tar:
        headers = _Budget(archive, limits, "declare")
        for member in tar:  # reads the headers only; stops at the first member past a limit
            headers.charge_tar(member)
        tar.extractall(dest, filter=_tar_filter(archive, _Budget(archive, limits, "wrote")))


def _extract_zip(archive: Path, dest: Path, limits: ExtractLimits) -> None:
    with zipfile.ZipFile(archive) as zf:
        headers = _Budget(archive, limits, "declare")
        for info in zf.infolist():
            _check_member(archive, info.filename)
            headers.charge(info.file_size)
        written = _Budget(archive, limits, "wrote")
        for info in zf.infolist():
            # zipfile stops a member at its declared size (checked above); count what landed.
            path = Path(zf.extract(info, dest))
            written.charge(0 if info.is_dir() else path.stat().st_size)
