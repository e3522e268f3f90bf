"""Published numbers (papers, official repositories) as data: ``results/reported/*.csv``.

Each CSV has exactly the columns :data:`REPORTED_COLUMNS`, one row per (method, backbone,
protocol, dataset, shots, space) and source:

- ``method``: a registered method name (``coop``, ``maple``, ...);
- ``backbone``: an open_clip id such as ``ViT-B-16:openai`` (stored canonically);
- ``protocol``: ``fewshot``, ``base2novel``, ``cross-dataset`` or ``domain-generalization``;
- ``dataset``: a registered dataset name, or ``Average`` for a published average row; for the
  transfer protocols, the dataset trained on;
- ``shots``: a positive integer (16 for base-to-novel and transfer);
- ``space``: ``all``, ``base``, ``novel``, ``hm``, ``mean`` or a target dataset name;
- ``value``: accuracy in percent, in [0, 100], as published;
- ``source``: ``paper`` or ``repository``; ``location``: where the number was read (for a
  repository ``owner/name:path@<40-hex commit>``; for a paper its table and arXiv id);
- ``reference``: arXiv id or URL of the publication; ``how``: ``copied`` or ``computed``;
- ``primary``: ``yes`` or ``no``. Where sources disagree on one number, every version is kept
  and exactly one is primary: the one the leaderboard compares against.

:func:`read_reported` checks every row, raising :class:`~fewshot.types.ConfigError` with one
line naming the file, the row (the file's line number; the header is row 1) and the problem.
It adds ``accuracy`` (the value as a float) and ``citation`` (a short human string).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import TYPE_CHECKING

from fewshot.types import PROTOCOLS, BackboneSpec, ConfigError

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["REPORTED_COLUMNS", "default_reported_dir", "read_reported"]

REPORTED_COLUMNS = [
    "method",
    "backbone",
    "protocol",
    "dataset",
    "shots",
    "space",
    "value",
    "source",
    "location",
    "reference",
    "how",
    "primary",
]
KEY_COLUMNS = ["method", "backbone", "protocol", "dataset", "shots", "space", "location"]
AVERAGE = "Average"
SPACES = ("all", "base", "novel", "hm", "mean")
SOURCES = ("paper", "repository")
HOWS = ("copied", "computed")
PRIMARY = ("yes", "no")
NUMBER = ["method", "backbone", "protocol", "dataset", "shots", "space"]  # one published number
_REPO_LOCATION = re.compile(r"^(?P<repo>[\w.-]+/[\w.-]+):(?P<path>[^@\s]+)@(?P<commit>[0-9a-f]{40})$")


def default_reported_dir() -> Path | None:
    """``results/reported`` of the checkout this package runs from, else None."""
    root = Path(__file__).resolve().parent.parent
    folder = root / "results" / "reported"
    return folder if (root / "pyproject.toml").is_file() and folder.is_dir() else None


def read_reported(folder: Path) -> pd.DataFrame:
    """Every ``*.csv`` under ``folder``, checked, with ``accuracy`` and ``citation`` added."""
    import pandas as pd

    rows: list[dict[str, object]] = []
    seen: dict[tuple[object, ...], str] = {}
    for path in sorted(Path(folder).glob("*.csv")):
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        _check_columns(path, list(frame.columns))
        for index, raw in enumerate(frame.to_dict("records")):
            where = f"{path.name} row {index + 2}"
            row = _parse_row(where, {k: str(v).strip() for k, v in raw.items()})
            key = tuple(row[c] for c in KEY_COLUMNS)
            if key in seen:
                raise ConfigError(f"{where}: duplicate of {seen[key]} (same {', '.join(KEY_COLUMNS)}).")
            seen[key] = where
            rows.append(row)
    _check_one_primary(rows)
    return pd.DataFrame(rows, columns=[*REPORTED_COLUMNS, "accuracy", "citation"])


def _check_one_primary(rows: list[dict[str, object]]) -> None:
    """Every published number has exactly one primary row (the one compared against)."""
    primaries: dict[tuple[object, ...], int] = {}
    for row in rows:
        number = tuple(row[c] for c in NUMBER)
        primaries[number] = primaries.get(number, 0) + int(row["primary"] is True)
    bad = [number for number, count in primaries.items() if count != 1]
    if bad:
        named = ", ".join("/".join(str(v) for v in number) for number in bad[:3])
        raise ConfigError(
            f"Reported numbers {named}: each needs exactly one row with primary=yes (the one the "
            "leaderboard compares against); mark the others primary=no."
        )


def _check_columns(path: Path, columns: list[str]) -> None:
    missing = [c for c in REPORTED_COLUMNS if c not in columns]
    extra = [c for c in columns if c not in REPORTED_COLUMNS]
    if missing or extra:
        problems = [f"missing column(s) {', '.join(missing)}"] if missing else []
        problems += [f"unknown column(s) {', '.join(extra)}"] if extra else []
        raise ConfigError(f"{path.name} row 1: {'; '.join(problems)}; expected {','.join(REPORTED_COLUMNS)}.")


def _parse_row(where: str, raw: dict[str, str]) -> dict[str, object]:
    empty = [c for c in REPORTED_COLUMNS if not raw[c]]
    if empty:
        raise ConfigError(f"{where}: empty {', '.join(empty)}.")
    try:
        row: dict[str, object] = {
            **raw,
            "method": _known_method(raw["method"]),
            "backbone": BackboneSpec.parse(raw["backbone"]).id,
            "protocol": _one_of("protocol", raw["protocol"], PROTOCOLS),
            "dataset": _known_dataset(raw["dataset"], allow=(AVERAGE,)),
            "shots": _shots(raw["shots"]),
            "space": _known_dataset(raw["space"], allow=SPACES),
            "value": _value(raw["value"]),
            "source": _one_of("source", raw["source"], SOURCES),
            "how": _one_of("how", raw["how"], HOWS),
            "primary": _one_of("primary", raw["primary"], PRIMARY) == "yes",
        }
        row["citation"] = _citation(str(row["source"]), raw["location"])
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None
    row["accuracy"] = row["value"]
    return row


def _one_of(column: str, text: str, allowed: tuple[str, ...]) -> str:
    if text not in allowed:
        raise ConfigError(f"unknown {column} {text!r}; expected one of {', '.join(allowed)}.")
    return text


def _known_method(name: str) -> str:
    from fewshot.methods import METHODS

    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; expected one of {', '.join(METHODS.names())}.")
    return name


def _known_dataset(name: str, allow: tuple[str, ...]) -> str:
    from fewshot.datasets import DATASETS

    if name not in allow and name not in DATASETS:
        raise ConfigError(
            f"unknown dataset or space {name!r}; expected {', '.join(allow)} or a dataset name."
        )
    return name


def _shots(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"bad shots {text!r}; expected a positive integer.")
    return int(text)


def _value(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"bad value {text!r}; expected a number.") from None
    if not math.isfinite(value) or not 0.0 <= value <= 100.0:
        raise ConfigError(f"value {text} out of range; expected a finite accuracy in [0, 100].")
    return value


def _citation(source: str, location: str) -> str:
    """``README (owner/name@abc1234)`` for a repository; the location itself for a paper."""
    if source == "paper":
        return f"paper: {location}"
    match = _REPO_LOCATION.match(location)
    if match is None:
        raise ConfigError(f"bad repository location {location!r}; expected owner/name:path@<40-hex commit>.")
    stem = Path(match["path"]).with_suffix("").as_posix()
    label = stem.upper() if stem.lower() == "readme" else stem
    return f"{label} ({match['repo']}@{match['commit'][:7]})"
