"""Dataset downloads: a resumable, verified installer for the recipes of
:mod:`fewshot.datasets.recipes` (``RECIPES``: per dataset key, its folder, public sources with
checksums, or manual steps).

:func:`download_dataset` installs one dataset:

1. each file is streamed over HTTP(S) into ``<root>/.downloads/<file>.part``; a rerun after an
   interruption resumes with a ``Range`` request (a server that ignores it restarts at zero);
2. the checksum is verified; a mismatch deletes the file and raises :class:`DownloadError`;
3. archives are extracted into a staging folder inside ``<root>/.downloads`` (tar members go
   through tarfile's ``data`` filter; members that would land outside are refused; an archive
   that would expand past :class:`ExtractLimits` is refused before anything is written), then
   the entries are moved into the dataset folder with ``os.replace``. A failure at any step
   leaves the dataset folder as it was. Entries already in place are never overwritten, except
   with ``force``, which moves them to ``<root>/.downloads/replaced/`` first.

A mirror replaces the base URL of a dataset's sources (``--mirror NAME=URL`` or
``$FEWSHOT_MIRROR_<NAME>``); the file name is appended and checksums are still verified. A
local folder works as a mirror, which is how files obtained by hand are installed.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import http.client
import os
import re
import shutil
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

import fewshot
from fewshot.datasets.extract import (
    MAX_EXTRACT_BYTES,
    MAX_EXTRACT_RATIO,
    DownloadError,
    ExtractLimitError,
    ExtractLimits,
    extract_archive,
)
from fewshot.datasets.recipes import RECIPES, Recipe, Source, get_recipe

__all__ = [
    "MAX_EXTRACT_BYTES",
    "MAX_EXTRACT_RATIO",
    "RECIPES",
    "DownloadError",
    "ExtractLimitError",
    "ExtractLimits",
    "Outcome",
    "Recipe",
    "Source",
    "download_dataset",
    "extract_archive",
    "fetch",
    "get_recipe",
    "mirror_env_var",
    "resolve_mirror",
]

DOWNLOADS_DIR = ".downloads"  # under the data root: partial files, archives, staging folders
_CHUNK = 1 << 20
_TIMEOUT_S = 60
_RETRY_WAIT_S = 0.5  # times the attempt number
_USER_AGENT = f"fewshot/{fewshot.__version__} (dataset downloader; Python urllib)"


# ------------------------------------------------------------------------------------------
# Mirrors


def mirror_env_var(key: str) -> str:
    """``FEWSHOT_MIRROR_<KEY>``: the key upper-cased, ``-`` as ``_``."""
    return "FEWSHOT_MIRROR_" + key.upper().replace("-", "_")


def resolve_mirror(key: str, mirrors: Mapping[str, str] | None = None) -> str | None:
    """The mirror for a dataset: ``mirrors[key]`` (the command line) first, then the environment."""
    mirror = (mirrors or {}).get(key) or os.environ.get(mirror_env_var(key), "").strip()
    return mirror or None


def source_url(source: Source, mirror: str | None) -> str:
    """The URL to fetch: the source's own, or the mirror's base URL plus the file name.

    A mirror without a scheme is a local folder.
    """
    if not mirror:
        return source.url
    if "://" not in mirror:
        mirror = Path(mirror).expanduser().resolve().as_uri()
    return mirror.rstrip("/") + "/" + urllib.parse.quote(source.name)


def _fix_hint(key: str) -> str:
    if not key:
        return "Retry, or fetch the file from another source."
    return (
        f"Retry the command; if it fails again, fetch the files from another source with "
        f"--mirror {key}=URL (or ${mirror_env_var(key)}=URL; a local folder works too)."
    )


# ------------------------------------------------------------------------------------------
# Fetching: resumable, verified


class _Interrupted(Exception):
    """The transfer stopped early; the .part file keeps what arrived."""

    def __init__(self, done: int, total: int | None, reason: str) -> None:
        super().__init__(reason)
        self.done, self.total, self.reason = done, total, reason


def fetch(
    source: Source,
    downloads: Path,
    *,
    url: str | None = None,
    console: Console | None = None,
    attempts: int = 3,
    key: str = "",
) -> Path:
    """Download ``source`` (from ``url`` if given) into ``downloads``, verified; return its path.

    The transfer goes to ``<name>.part``, resumed with a Range request by the next attempt (or
    the next call) after an interruption. A complete file already in ``downloads`` is reused
    if it still verifies.
    """
    url = url or source.url
    downloads.mkdir(parents=True, exist_ok=True)
    final = downloads / source.name
    if final.exists():  # left by a run whose extraction failed for lack of space
        if source.digest is None or _file_digest(final, source) == source.digest[1]:
            return final
        final.unlink()
    part = final.with_name(final.name + ".part")
    attempts = max(1, attempts)
    for attempt in range(1, attempts + 1):
        try:
            hasher = _transfer(url, part, source, console)
            break
        except DownloadError as exc:  # unreachable, or an HTTP error: say where else to look
            raise DownloadError(f"{exc} {_fix_hint(key)}") from None
        except _Interrupted as exc:
            if attempt == attempts:
                total = f"{exc.total:,}" if exc.total else "?"
                raise DownloadError(
                    f"Download of {url} stopped after {exc.done:,} of {total} bytes ({exc.reason}). "
                    f"Run the same command again to resume from {part}. {_fix_hint(key)}"
                ) from None
            time.sleep(_RETRY_WAIT_S * attempt)
    _verify(part, hasher.hexdigest(), source, url, key, console)
    os.replace(part, final)
    return final


def _transfer(url: str, part: Path, source: Source, console: Console | None) -> Any:
    """Stream ``url`` into ``part`` (appending when the server honours Range); return the hasher."""
    offset = part.stat().st_size if part.exists() else 0
    response, offset, total = _open(url, offset)
    hasher = hashlib.new(source.digest[0] if source.digest else "sha256")
    if offset:
        _hash_into(part, hasher)
    done = offset
    with response, part.open("ab" if offset else "wb") as fh, _progress(console) as progress:
        task = progress.add_task(source.name, total=total or source.size, completed=offset)
        try:
            while chunk := response.read(_CHUNK):
                fh.write(chunk)
                hasher.update(chunk)
                done += len(chunk)
                progress.update(task, completed=done)
        except (OSError, http.client.HTTPException) as exc:
            raise _Interrupted(done, total, str(exc) or type(exc).__name__) from None
    if total is not None and done != total:
        raise _Interrupted(done, total, "the connection closed early")
    return hasher


def _open(url: str, offset: int) -> tuple[Any, int, int | None]:
    """Open ``url`` from byte ``offset``; return (response, effective offset, total size)."""
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}  # the bytes as published
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=_TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and offset:  # the .part is not a prefix the server knows: restart
            return _open(url, 0)
        raise DownloadError(f"{url} answered HTTP {exc.code} ({exc.reason}).") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(f"Cannot reach {url} ({reason}); check the network.") from None
    status = getattr(response, "status", None) or 200  # file:// answers no status
    length = response.headers.get("Content-Length")
    size = int(length) if length and length.isdigit() else None
    if offset and status == 206:
        start, total = _content_range(response.headers.get("Content-Range", ""))
        if start == offset:
            return response, offset, total if total is not None else _plus(offset, size)
        response.close()
        return _open(url, 0)
    if status != 200:
        response.close()
        raise DownloadError(f"{url} answered HTTP {status}; expected 200.")
    return response, 0, size  # a server that ignores Range sends the whole file: restart


def _content_range(header: str) -> tuple[int | None, int | None]:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", header.strip())
    if not match:
        return None, None
    return int(match[1]), None if match[2] == "*" else int(match[2])


def _plus(offset: int, size: int | None) -> int | None:
    return None if size is None else offset + size


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True, markup=False),
        transient=True,
    )


def _hash_into(path: Path, hasher: Any) -> None:
    with path.open("rb") as fh:
        while chunk := fh.read(_CHUNK):
            hasher.update(chunk)


def _file_digest(path: Path, source: Source) -> str | None:
    if source.digest is None:
        return None
    hasher = hashlib.new(source.digest[0])
    _hash_into(path, hasher)
    return hasher.hexdigest()


def _verify(part: Path, actual: str, source: Source, url: str, key: str, console: Console | None) -> None:
    if source.digest is None:
        (console or Console(stderr=True, markup=False)).print(
            f"{source.name}: sha256 {actual} ({source.unverified})", markup=False, soft_wrap=True
        )
        return
    algo, expected = source.digest
    if actual != expected:
        part.unlink()
        raise DownloadError(
            f"Checksum mismatch for {url}: expected {algo} {expected}, got {actual}. The file was "
            f"deleted. {_fix_hint(key)} (A server that answers with an error or login page also "
            "causes this.)"
        )


@contextlib.contextmanager
def _temp_dir(parent: Path, prefix: str) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _stage(source: Source, file: Path, staging: Path, limits: ExtractLimits | None = None) -> None:
    """Put the content of one fetched file into ``staging`` (which mirrors the dataset folder)."""
    target = staging / source.dest
    target.mkdir(parents=True, exist_ok=True)
    if not source.extract:
        shutil.copyfile(file, target / source.name)
        return
    with _temp_dir(staging.parent, f"{staging.name}.x-") as tmp:
        try:
            extract_archive(file, tmp, limits=limits)
            root = tmp
            if source.nested:
                inner = tmp / source.nested
                if not inner.is_file():
                    raise DownloadError(f"{file.name} does not contain {source.nested}.")
                root = tmp / ".nested"
                extract_archive(inner, root, limits=limits)
        except ExtractLimitError as exc:  # verified, maybe: keep it for a rerun with a raised limit
            raise ExtractLimitError(f"{exc} The download is kept as {file}; delete it if unwanted.") from None
        except DownloadError as exc:
            file.unlink(missing_ok=True)
            raise DownloadError(f"{exc} The downloaded file was deleted: run the command again.") from None
        if source.strip and (root / source.strip).is_dir():
            root = root / source.strip
        for entry in sorted(root.iterdir()):
            if (target / entry.name).exists():
                raise DownloadError(f"Two sources of one recipe both provide {entry.name}; report this.")
            os.replace(entry, target / entry.name)


# ------------------------------------------------------------------------------------------
# Installing a dataset


@dataclass
class Outcome:
    """What happened to one dataset: installed, present, manual (steps to follow) or failed."""

    key: str
    status: str
    message: str
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when the dataset is in place."""
        return self.status in ("installed", "present")


def download_dataset(
    key: str,
    root: Path,
    *,
    mirrors: Mapping[str, str] | None = None,
    force: bool = False,
    console: Console | None = None,
    attempts: int = 3,
    limits: ExtractLimits | None = None,
) -> Outcome:
    """Download, verify and extract one dataset into ``root``, or say how to get it by hand.

    Sources whose content is already in the folder are skipped (all of them: the dataset is
    ``present``) unless ``force``. Problems with the download come back as a ``failed``
    Outcome whose message names the file and the fix; an unknown key raises ConfigError.
    ``limits`` bounds what each archive may expand to (default :meth:`ExtractLimits.default`).
    """
    recipe = get_recipe(key)
    root = Path(root)
    mirror = resolve_mirror(key, mirrors)
    todo = [s for s in recipe.sources if force or not (root / recipe.folder / s.creates).exists()]
    if not force and not recipe.missing(root):
        return Outcome(key, "present", f"already in {root / recipe.folder}", _notes(recipe, root))
    if recipe.manual is not None and not (mirror and recipe.sources):
        missing = ", ".join(recipe.missing(root))
        message = f"missing {missing}; manual steps:\n{recipe.manual_text(root)}"
        return Outcome(key, "manual", message, _notes(recipe, root))
    try:
        replaced = _install(recipe, todo, root, mirror, force, console, attempts, limits)
    except DownloadError as exc:
        return Outcome(key, "failed", str(exc), _notes(recipe, root))
    notes = _notes(recipe, root)
    if replaced is not None:
        notes.insert(0, f"--force: the entries replaced were moved to {replaced}; delete them when done.")
    return Outcome(key, "installed", f"installed into {root / recipe.folder}", notes)


def _install(
    recipe: Recipe,
    todo: list[Source],
    root: Path,
    mirror: str | None,
    force: bool,
    console: Console | None,
    attempts: int,
    limits: ExtractLimits | None = None,
) -> Path | None:
    """Fetch every source, stage them all, then move the staged entries into place."""
    downloads = root / DOWNLOADS_DIR
    downloads.mkdir(parents=True, exist_ok=True)
    for stale in downloads.glob(f"{recipe.key}.staging-*"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    files = [
        fetch(s, downloads, url=source_url(s, mirror), console=console, attempts=attempts, key=recipe.key)
        for s in todo
    ]
    try:
        with _temp_dir(downloads, f"{recipe.key}.staging-") as staging:
            for source, file in zip(todo, files, strict=True):
                _stage(source, file, staging, limits)
            _check_layout(todo, staging, files)
            replaced = _merge(staging, root / recipe.folder, downloads, recipe.key, force)
    except OSError as exc:
        raise DownloadError(
            f"Could not write under {root} ({exc}). Free some space or fix the permissions, then run "
            f"the command again; the verified downloads in {downloads} are reused."
        ) from None
    for file in files:
        file.unlink(missing_ok=True)
    return replaced


def _check_layout(todo: list[Source], staging: Path, files: list[Path]) -> None:
    for source, file in zip(todo, files, strict=True):
        if not (staging / source.creates).exists():
            raise DownloadError(
                f"{file.name} did not yield {source.creates}: the upstream layout differs from the "
                "recipe. Please report it; meanwhile place the files by hand (docs/datasets.md)."
            )


def _merge(staging: Path, folder: Path, downloads: Path, key: str, force: bool) -> Path | None:
    """Move staged entries into ``folder``; existing ones stay, or with ``force`` move aside."""
    folder.mkdir(parents=True, exist_ok=True)
    backup = None
    for entry in sorted(staging.iterdir()):
        target = folder / entry.name
        if target.exists() or target.is_symlink():
            if not force:
                continue  # never overwrite what is already in place
            if backup is None:
                backup = downloads / "replaced" / f"{key}-{time.strftime('%Y%m%d-%H%M%S')}"
                backup.mkdir(parents=True, exist_ok=True)
            _move(target, backup / entry.name)
        _move(entry, target)
    return backup


def _move(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:  # a dataset folder linked to another filesystem
            raise
        shutil.move(src, dst)


def _notes(recipe: Recipe, root: Path) -> list[str]:
    notes = [n.format(root=root) for n in recipe.notes]
    for name, target in recipe.shared:
        src, dst = root / name, root / recipe.folder / target
        if (root / recipe.folder).is_dir() and src.is_file() and not dst.exists():
            shutil.copyfile(src, dst)
            notes.append(f"copied {src} to {dst}")
    split = recipe.split_note(root)
    return notes + ([split] if split else [])
