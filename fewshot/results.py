"""Result records: atomic JSON I/O, provenance, and loading into pandas.

One JSON file per run (``RunSpec.record_path``), written atomically and never edited. The
record format is :meth:`fewshot.types.RunResult.to_dict`; ``schema_version`` says which
format a file uses, and a file newer than this code is refused rather than misread.

The keys of ``RunResult.provenance`` (the runner fills them, mostly through
:func:`collect_provenance`) are listed in :data:`PROVENANCE_KEYS`; the keys of
``RunResult.costs`` in :data:`COST_KEYS`.

pandas is imported inside the functions that build frames, so that importing this module
stays cheap.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import platform
import re
import shlex
import subprocess
import sys
import warnings
from collections.abc import Iterable, Iterator
from functools import lru_cache
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fewshot
from fewshot._io import atomic_write
from fewshot.descriptions.wiring import knowledge_label
from fewshot.types import FewshotError, RunResult, RunSpec, stable_hash

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COST_KEYS",
    "PROVENANCE_KEYS",
    "RECORD_COLUMNS",
    "SCHEMA_VERSION",
    "NewerRecordError",
    "collect_provenance",
    "command_line",
    "find_record",
    "iter_records",
    "load_records",
    "method_origin",
    "read_record",
    "records_frame",
    "write_record",
]

SCHEMA_VERSION = 1  # the newest RunResult.schema_version this code reads

PROVENANCE_KEYS = (
    "fewshot_version",
    "git_hash",
    "git_dirty",
    "torch",
    "open_clip",
    "python",
    "platform",
    "date",
    "command",  # the command line that made the record
    "cuda",
    "cudnn",
    "gpu",
    "driver",
    "device",
    "precision",
    "split_hash",
    "subset_hash",
    "task_hash",
    "dataset_version",
    "split_source",
    "backbone_digest",
    "method_origin",  # {kind, target, distribution, version}
    "method_version",
    "code_digest",  # fewshot.codeid: the method's code, comments and docstrings excluded
    # True when the run chose anything (epoch, hyper-parameter) by its test accuracy; absent
    # means False. Set by the runner for a method config whose reads_test is true
    # (fewshot.test_access, e.g. tip-adapter protocol=original), by plugins and imported
    # records; the leaderboard marks such results ‡.
    "selected_on_test",
    # Description sets (fewshot.descriptions) of a method that reads them: kind -> {name, kind,
    # hash}, for the fitted dataset and (a cross-dataset record) the target's own.
    "knowledge",
    "target_knowledge",
    "selected",  # hyper-parameters the method chose while fitting (Adapter.selected())
    "executor",  # where the run ran: local, ray or slurm (fewshot.executors)
    "log",  # a Slurm job's log file (its stdout and stderr)
)

COST_KEYS = ("wall_time_s", "fit_time_s", "peak_memory_mb", "trainable_params", "images_encoded")

# Columns of load_records / records_frame, in order: one row per (run, label space).
RECORD_COLUMNS = (
    "method",
    "variant",
    "dataset",
    "target",
    "backbone",
    "protocol",
    "shots",
    "seed",
    "aug_views",
    "precision",
    "space",
    "accuracy",
    "applicable",
    "status",
    "error",
    "spec_hash",
    "config_hash",
    "split_hash",
    "subset_hash",
    "task_hash",
    "dataset_version",
    "split_source",
    "generated_split",
    "selected_on_test",
    "method_version",
    "code_digest",
    "knowledge",  # the description sets used, "kind=name@hash|..." ("" for none)
    "method_kind",
    "fewshot_version",
    "git_hash",
    "git_dirty",
    "backbone_digest",
    "device",
    "date",
    *COST_KEYS,
    "schema_version",
    "path",
)


# ------------------------------------------------------------------------------------------
# Atomic I/O


# What to do about a damaged record: a sweep reruns the run itself (the file goes to history).
_RERUN_FIX = "Rerunning that run replaces it; the damaged file is kept in the results folder's .history/."


def write_record(result: RunResult, path: Path) -> None:
    """Write a run's record as JSON (indent 2, sorted keys), atomically.

    The JSON is streamed into the temp file, so a value that cannot be serialised fails the
    write without touching a previous record at ``path``.
    """

    def dump(fh: Any) -> None:
        # allow_nan=False: NaN is not JSON; a NaN metric is a bug upstream, not data.
        json.dump(result.to_dict(), fh, indent=2, sort_keys=True, allow_nan=False)
        fh.write("\n")

    atomic_write(path, dump)


def read_record(path: Path) -> RunResult:
    """Read one record; raise :class:`FewshotError` naming the file if it is unusable."""
    path = Path(path)
    if path.is_dir():
        raise FewshotError(
            f"Result record {path} is a folder, not a record: move it out of the results folder."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FewshotError(f"Result record {path} does not exist.") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FewshotError(f"Result record {path} is not valid JSON ({exc}). {_RERUN_FIX}") from None
    if not isinstance(data, dict):
        raise FewshotError(f"Result record {path} does not hold a JSON object. {_RERUN_FIX}")
    bad = _non_finite(data)
    if bad is not None:  # write_record never writes one (allow_nan=False): the file is damaged
        raise FewshotError(
            f"Result record {path} holds a non-finite number at {bad}, which fewshot never writes: "
            f"the file is damaged. {_RERUN_FIX}"
        )
    schema = data.get("schema_version", 1)
    if not isinstance(schema, int) or schema > SCHEMA_VERSION:
        raise NewerRecordError(
            f"Result record {path} has schema version {schema!r}; this fewshot reads up to "
            f"{SCHEMA_VERSION}. Upgrade fewshot to read it."
        )
    try:
        return RunResult.from_dict(data)
    except (KeyError, TypeError, ValueError) as exc:
        raise FewshotError(
            f"Result record {path} does not match the record format ({type(exc).__name__}: {exc}). "
            f"{_RERUN_FIX}"
        ) from None


class NewerRecordError(FewshotError):
    """A record written by a newer fewshot: it is never read as something else, nor overwritten."""


def _non_finite(value: Any, where: str = "") -> str | None:
    """The key path (e.g. ``metrics.all = nan``) of the first NaN or infinity in ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        return f"{where or '<top>'} = {value}"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def find_record(spec: RunSpec, results_dir: Path) -> RunResult | None:
    """The record of ``spec`` under ``results_dir``, if one exists for this exact spec.

    Returns ``None`` when there is no file, when the file belongs to a different spec hash
    (e.g. other evaluation targets), or when it is unreadable (a warning names it; the file
    is left in place and will be replaced atomically by the new run). Failure records are
    returned as they are: ``result.ok`` tells the caller whether to retry. A record of a
    newer schema raises :class:`NewerRecordError`: it must not be overwritten.
    """
    path = spec.record_path(results_dir)
    if not path.is_file():
        return None
    try:
        result = read_record(path)
    except NewerRecordError:
        raise
    except FewshotError as exc:
        warnings.warn(str(exc), stacklevel=2)
        return None
    return result if result.spec.hash == spec.hash else None


def _iter_paths(results_dir: Path) -> Iterator[tuple[Path, RunResult]]:
    root = Path(results_dir)
    if not root.is_dir():
        return
    # Sorted so that every consumer (leaderboard, tests) sees records in the same order.
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue  # temp files of writes in progress, and the .history folder
        try:
            yield path, read_record(path)
        except FewshotError as exc:
            warnings.warn(f"Skipping unreadable record: {exc}", stacklevel=3)


def iter_records(results_dir: Path) -> Iterator[RunResult]:
    """Every readable record under ``results_dir``, in path order.

    Unreadable files are skipped with a warning naming them; nothing is ever deleted.
    """
    for _, result in _iter_paths(results_dir):
        yield result


# ------------------------------------------------------------------------------------------
# Frames


def _run_columns(result: RunResult, path: Path | None) -> dict[str, Any]:
    spec, prov, costs = result.spec, result.provenance, result.costs
    origin = prov.get("method_origin") or {}
    row: dict[str, Any] = {
        "method": spec.method,
        "variant": spec.variant,
        "dataset": spec.dataset,
        "target": spec.target,
        "backbone": spec.backbone,
        "protocol": spec.protocol,
        "shots": spec.shots,
        "seed": spec.seed,
        "aug_views": spec.aug_views,
        "precision": spec.precision,
        "status": result.status,
        "error": result.error,
        "spec_hash": spec.hash,
        "config_hash": stable_hash(result.config) if result.config else None,
        # A plugin's version is its distribution's; built-ins have none of their own (None)
        # unless the runner records "method_version": they change with fewshot_version/git_hash.
        "method_version": prov.get("method_version") or origin.get("version"),
        "code_digest": prov.get("code_digest"),
        "knowledge": knowledge_label(prov),
        "method_kind": origin.get("kind"),
        "schema_version": result.schema_version,
        "path": str(path) if path is not None else None,
    }
    for key in (
        "split_hash",
        "subset_hash",
        "task_hash",
        "dataset_version",
        "split_source",
        "fewshot_version",
        "git_hash",
        "git_dirty",
        "backbone_digest",
        "device",
        "date",
    ):
        row[key] = prov.get(key)
    # Trained or scored on a split fewshot generated (no official split file): not comparable
    # with published numbers, and labelled so in the leaderboard.
    row["generated_split"] = "generated" in (prov.get("split_source"), prov.get("target_split_source"))
    # Model selection that looked at the test split (never by a built-in method): marked ‡.
    row["selected_on_test"] = prov.get("selected_on_test") is True
    for key in COST_KEYS:
        value = costs.get(key)
        row[key] = float(value) if value is not None else math.nan
    return row


def _rows(result: RunResult, path: Path | None) -> list[dict[str, Any]]:
    base = _run_columns(result, path)
    if not result.metrics:
        # A failed run (or one that measured nothing) still gets a row, so it can be listed.
        return [{**base, "space": "", "accuracy": math.nan, "applicable": False}]
    rows = []
    for space, value in sorted(result.metrics.items()):
        rows.append(
            {
                **base,
                "space": space,
                "accuracy": float(value) if value is not None else math.nan,
                "applicable": value is not None,
            }
        )
    return rows


def records_frame(results: Iterable[RunResult], paths: Iterable[Path | None] | None = None) -> pd.DataFrame:
    """One row per (run, label space) of ``results``; columns :data:`RECORD_COLUMNS`.

    ``accuracy`` is NaN where the space is not applicable (``applicable`` False) and for a
    failed run, which has one row with ``space`` "".
    """
    import pandas as pd

    results = list(results)
    path_list = list(paths) if paths is not None else [None] * len(results)
    rows = [row for result, path in zip(results, path_list, strict=True) for row in _rows(result, path)]
    frame = pd.DataFrame(rows, columns=list(RECORD_COLUMNS))
    return frame.astype(
        {
            "shots": "int64",
            "seed": "int64",
            "aug_views": "int64",
            "accuracy": "float64",
            "applicable": "bool",
            "generated_split": "bool",
            "selected_on_test": "bool",
        }
    )


def load_records(results_dir: Path) -> pd.DataFrame:
    """All readable records under ``results_dir`` as a frame (see :func:`records_frame`)."""
    pairs = list(_iter_paths(results_dir))
    return records_frame([r for _, r in pairs], [p for p, _ in pairs])


# ------------------------------------------------------------------------------------------
# Provenance


def _dist_version(name: str) -> str | None:
    # Read from package metadata: importing torch just to ask its version costs seconds.
    try:
        return version(name)
    except PackageNotFoundError:
        return None


def _git(args: list[str], cwd: Path) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=cwd, capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@lru_cache(maxsize=1)
def _git_state() -> tuple[str | None, bool | None]:
    """(HEAD hash, dirty) of the fewshot source tree, or (None, None) if not a git checkout.

    Cached for the process: the code that runs is the code imported at start-up.
    """
    package_dir = Path(fewshot.__file__).resolve().parent
    checkout = package_dir.parent
    top = _git(["rev-parse", "--show-toplevel"], checkout)
    # An installed package inside some other repository (a venv in a project) is not a checkout.
    if top is None or Path(top).resolve() != checkout:
        return None, None
    head = _git(["rev-parse", "HEAD"], checkout)
    if head is None:
        return None, None
    status = _git(["status", "--porcelain", "--", str(package_dir)], checkout)
    return head, (bool(status) if status is not None else None)


def _nvidia_driver() -> str | None:
    """The NVIDIA kernel driver version (Linux), without importing anything."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?([\d.]+)", text)
    return match.group(1) if match else None


def _accelerator(device: str) -> dict[str, Any]:
    """CUDA and cuDNN versions of the torch build, and on a CUDA device its name and the
    driver. Only read when torch is already imported (a run has imported it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return {}
    info: dict[str, Any] = {"cuda": torch.version.cuda, "cudnn": None, "gpu": None, "driver": None}
    with contextlib.suppress(Exception):  # a CPU build has no cuDNN to ask
        info["cudnn"] = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
        info["driver"] = _nvidia_driver()
    return info


def command_line() -> str | None:
    """This process's command line, as a record shows it (``fewshot run -m coop ...``)."""
    return shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None


def collect_provenance(**extra: Any) -> dict[str, Any]:
    """Versions and environment for a result record; ``extra`` keys are added (and win).

    Fills fewshot_version, git_hash, git_dirty, torch, open_clip, python, platform and date
    (UTC, ISO 8601). The runner adds device, split/subset/task hashes, dataset version,
    split source, backbone digest and method origin (see :data:`PROVENANCE_KEYS`).
    """
    git_hash, git_dirty = _git_state()
    prov: dict[str, Any] = {
        "fewshot_version": fewshot.__version__,
        "git_hash": git_hash,
        "git_dirty": git_dirty,
        "torch": _dist_version("torch"),
        "open_clip": _dist_version("open_clip_torch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command_line(),
        **_accelerator(str(extra.get("device", ""))),
    }
    prov.update(extra)
    return prov


def method_origin(method: str) -> dict[str, Any]:
    """``{kind, target, distribution, version}`` of a registered method (or file target)."""
    from fewshot.methods import METHODS

    origin = METHODS.origin(method)
    return {
        "kind": origin.kind,
        "target": origin.target,
        "distribution": origin.distribution,
        "version": origin.version,
    }
