"""Description sets on disk: where they live, the formats read, class-name matching, saving.

A set named NAME for dataset DS is the file ``<data root>/descriptions/DS/NAME.json``. Two
formats are read:

- fewshot's own (written by ``fewshot describe`` and the downloader)::

      {"fewshot_descriptions": 1, "name": "...", "kind": "descriptions" | "synonyms",
       "provenance": {...}, "classes": {"class name": ["sentence", ...], ...}}

- a plain ``{"class name": ["sentence", ...]}`` dict, the shape of every published file:
  DCLIP's ``descriptors_*.json``, CuPL's ``*_prompts_*.json``, ProAPO's
  ``category_description/*.json`` and ``category_synonym/*.json``. It is read as it is, as
  the kind the method asks for; its provenance is ``{"source": "file", "path", "sha256"}``,
  plus the keys of an optional sidecar ``NAME.provenance.json`` (a JSON object, e.g. the
  URL, licence and commit the file came from; a ``kind`` there fixes the file's kind).

Class names are matched to the dataset's (:func:`match_classes`) ignoring case, ``_``, ``-``,
apostrophes and repeated spaces, as published files spell names by hand ("Black-footed
Albatross" for CUB's "Black footed Albatross"). Every dataset class must be found and every
key of the file must be one: a partial match is an error listing the missing and extra names
with the nearest names of the other side. A shifted domain (ImageNet-A, toy-shapes-sketch)
without a set of its own uses its source dataset's set, restricted to its classes.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from fewshot._io import atomic_write_text
from fewshot.descriptions.sets import KINDS, DescriptionsError, DescriptionSet, MissingDescriptionsError

__all__ = [
    "FORMAT_VERSION",
    "ListedSet",
    "list_description_sets",
    "load_description_set",
    "match_classes",
    "normalized_name",
    "read_description_file",
    "save_description_set",
    "set_path",
    "sets_dir",
]

FORMAT_VERSION = 1  # the "fewshot_descriptions" value this code writes and reads
SIDECAR = ".provenance.json"  # NAME.provenance.json beside a plain file
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_SHOWN = 10  # names listed per side in a mismatch error


# ------------------------------------------------------------------------------------------
# Paths


def sets_dir(data_root: Path | str | None, dataset: str) -> Path:
    """``<data root>/descriptions/<dataset>``: the folder of a dataset's sets."""
    if data_root is None:
        raise MissingDescriptionsError(
            f"No data root, so no description sets for {dataset}: set $FEWSHOT_DATA or pass "
            "--data-root (sets live in DATA_ROOT/descriptions/DATASET/NAME.json)."
        )
    return Path(data_root) / "descriptions" / dataset


def check_name(name: str) -> str:
    """``name`` if it can be a set's file name, else an error."""
    if not _NAME.fullmatch(name) or name.endswith(SIDECAR.removesuffix(".json")):
        raise DescriptionsError(
            f"Bad description set name {name!r}: use letters, digits and . _ + - "
            "(it is the file name, NAME.json)."
        )
    return name


def set_path(data_root: Path | str | None, dataset: str, name: str) -> Path:
    """Where the set ``name`` of ``dataset`` lives."""
    return sets_dir(data_root, dataset) / f"{check_name(name)}.json"


# ------------------------------------------------------------------------------------------
# Reading


def read_description_file(path: Path, kind: str | None = None) -> DescriptionSet:
    """The set in ``path`` with the file's own class names (not yet matched to a dataset).

    ``kind``: the kind asked for; a file of the other kind is an error. A plain dict file
    without a sidecar kind is read as ``kind`` (default ``descriptions``).
    """
    path = Path(path)
    try:
        stat = path.stat()
    except FileNotFoundError:
        raise MissingDescriptionsError(f"No description file {path}.") from None
    return _read(str(path), stat.st_mtime_ns, stat.st_size, kind)


@lru_cache(maxsize=32)
def _read(path_text: str, mtime_ns: int, size: int, kind: str | None) -> DescriptionSet:
    """:func:`read_description_file`, cached per file version (sets are read by the plan
    check, the fit and every evaluation)."""
    path = Path(path_text)
    raw = path.read_bytes()
    try:
        data = json.loads(raw.decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DescriptionsError(f"{path} is not a JSON file ({exc}); fix or remove it.") from None
    if not isinstance(data, dict):
        raise DescriptionsError(f"{path}: expected a JSON object of class names, got {type(data).__name__}.")
    if "fewshot_descriptions" in data:
        return _native(path, data, kind)
    provenance: dict[str, Any] = {**_sidecar(path)}
    file_kind = str(provenance.pop("kind", "") or kind or "descriptions")
    _check_kind(path, file_kind, kind)
    provenance.update({"source": "file", "path": str(path), "sha256": hashlib.sha256(raw).hexdigest()})
    return DescriptionSet(path.stem, _classes(path, data), file_kind, provenance)


def _native(path: Path, data: dict[str, Any], kind: str | None) -> DescriptionSet:
    version = data.get("fewshot_descriptions")
    if version != FORMAT_VERSION:
        raise DescriptionsError(
            f"{path} is description format {version!r}; this fewshot reads format {FORMAT_VERSION}. "
            "Upgrade fewshot, or regenerate the file (fewshot describe)."
        )
    file_kind = str(data.get("kind", "descriptions"))
    if file_kind not in KINDS:
        raise DescriptionsError(f"{path}: unknown kind {file_kind!r}; use one of {', '.join(KINDS)}.")
    _check_kind(path, file_kind, kind)
    provenance = data.get("provenance") or {}
    if not isinstance(provenance, dict):
        raise DescriptionsError(f"{path}: 'provenance' must be a JSON object.")
    classes = data.get("classes")
    if not isinstance(classes, dict):
        raise DescriptionsError(f"{path}: 'classes' must map class names to lists of sentences.")
    return DescriptionSet(path.stem, _classes(path, classes), file_kind, {**provenance, "path": str(path)})


def _check_kind(path: Path, found: str, asked: str | None) -> None:
    if found not in KINDS:
        raise DescriptionsError(f"{path}: unknown kind {found!r}; use one of {', '.join(KINDS)}.")
    if asked is not None and found != asked:
        raise DescriptionsError(
            f"{path} holds {found}, but {asked} were asked for: name a {asked} set in the method's "
            f"`{asked}` setting."
        )


def _sidecar(path: Path) -> dict[str, Any]:
    """The optional ``NAME.provenance.json`` beside a plain file (empty when absent)."""
    side = path.with_name(path.stem + SIDECAR)
    if not side.is_file():
        return {}
    try:
        data = json.loads(side.read_bytes().decode("utf-8-sig"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DescriptionsError(f"{side} is not a JSON file ({exc}); fix or remove it.") from None
    if not isinstance(data, dict):
        raise DescriptionsError(f"{side}: expected a JSON object of provenance keys.")
    return data


def _classes(path: Path, data: Mapping[str, Any]) -> dict[str, tuple[str, ...]]:
    """Class name -> sentences, checked: lists of strings, none empty."""
    out: dict[str, tuple[str, ...]] = {}
    for name, sentences in data.items():
        if not isinstance(sentences, list) or not all(isinstance(s, str) for s in sentences):
            raise DescriptionsError(f"{path}: class {name!r} must map to a list of strings.")
        if not sentences:
            raise DescriptionsError(f"{path}: class {name!r} has no sentences; remove it or add some.")
        out[str(name)] = tuple(sentences)
    if not out:
        raise DescriptionsError(f"{path} holds no classes.")
    return out


# ------------------------------------------------------------------------------------------
# Matching


def normalized_name(name: str) -> str:
    """A class name as matching compares it: lower case, ``_`` and ``-`` as spaces, no
    apostrophes, single spaces ("Chuck-will's-widow" -> "chuck will widow")."""
    text = re.sub(r"'s\b|[’']", "", name.casefold())
    return " ".join(re.sub(r"[_\-]", " ", text).split())


def match_classes(
    classes: Mapping[str, Sequence[str]],
    classnames: Sequence[str],
    *,
    what: str,
    allow_extra: bool = False,
) -> dict[str, tuple[str, ...]]:
    """The sentences of ``classes`` keyed by the dataset's ``classnames``, in their order.

    Every class name must match exactly one key (after :func:`normalized_name`) and, unless
    ``allow_extra``, every key a class name; otherwise a :class:`DescriptionsError` names
    ``what`` (the set and file), the missing and extra names and the nearest of each.
    """
    by_key: dict[str, str] = {}
    for key in classes:
        norm = normalized_name(key)
        if norm in by_key:
            raise DescriptionsError(f"{what}: keys {by_key[norm]!r} and {key!r} name the same class.")
        by_key[norm] = key
    wanted = {normalized_name(name): name for name in classnames}
    missing = [name for norm, name in wanted.items() if norm not in by_key]
    extra = [] if allow_extra else [key for norm, key in by_key.items() if norm not in wanted]
    if missing or extra:
        raise DescriptionsError(_mismatch(what, missing, extra, list(by_key.values()), list(classnames)))
    return {name: tuple(classes[by_key[normalized_name(name)]]) for name in classnames}


def _mismatch(what: str, missing: list[str], extra: list[str], keys: list[str], classnames: list[str]) -> str:
    lines = [
        f"{what} does not match the dataset's class names ({len(missing)} missing, {len(extra)} "
        "extra; names are compared ignoring case, '_', '-' and apostrophes):"
    ]
    for label, names, other, side in (
        ("missing", missing, keys, "in the file"),
        ("extra", extra, classnames, "dataset class"),
    ):
        for name in names[:_SHOWN]:
            lines.append(f"  {label}: {name!r}{_nearest(name, other, side)}")
        if len(names) > _SHOWN:
            lines.append(f"  ... and {len(names) - _SHOWN} more {label}")
    lines.append("Fix the class names in the file, or use a set made for this dataset.")
    return "\n".join(lines)


def _nearest(name: str, candidates: list[str], side: str) -> str:
    norm = {normalized_name(c): c for c in candidates}
    close = difflib.get_close_matches(normalized_name(name), list(norm), n=1, cutoff=0.6)
    return f" (nearest {side}: {norm[close[0]]!r})" if close else ""


# ------------------------------------------------------------------------------------------
# Loading for a dataset


def load_description_set(dataset: str, name: str, kind: str, data_root: Path | str | None) -> DescriptionSet:
    """The set ``name`` of ``kind`` for ``dataset``, keyed by the dataset's class names.

    The toy world's ``toy`` sets are built in; other names are read from
    ``<data root>/descriptions/<dataset>/<name>.json`` (a shifted domain without its own file
    uses its source's, restricted to its classes). A missing set is a
    :class:`MissingDescriptionsError`; a set that does not match the classes, a
    :class:`DescriptionsError`.
    """
    from fewshot.datasets import DATASETS, get_dataset
    from fewshot.descriptions.toy import TOY_SET, is_toy, toy_set

    if kind not in KINDS:
        raise DescriptionsError(f"Unknown description kind {kind!r}; use one of {', '.join(KINDS)}.")
    if name == TOY_SET and is_toy(dataset):
        return toy_set(dataset, kind)
    path = set_path(data_root, dataset, name)
    source = getattr(DATASETS.get(dataset), "domain_of", None)
    if not path.is_file() and source:
        path = set_path(data_root, source, name)
    if not path.is_file():
        raise MissingDescriptionsError(
            f"{dataset}: no {kind} set {name!r} ({path} does not exist) — get one with "
            f"`fewshot data download descriptions` or `fewshot describe {dataset}`."
        )
    found = read_description_file(path, kind)
    classnames = get_dataset(dataset, data_root).spec().classnames
    what = f"Description set {name!r} ({path})"
    matched = match_classes(found.classes, classnames, what=what, allow_extra=path.parent.name != dataset)
    return DescriptionSet(name, matched, found.kind, found.provenance)


# ------------------------------------------------------------------------------------------
# Saving


def save_description_set(
    dset: DescriptionSet, dataset: str, data_root: Path | str | None, *, overwrite: bool = False
) -> Path:
    """Write ``dset`` in fewshot's format to its place for ``dataset``; return the path.

    The write is atomic (a temp file renamed over the target), so an existing file is never
    left half-written. An existing file with other sentences is kept unless ``overwrite``;
    one with the same sentences is left as it is.
    """
    path = set_path(data_root, dataset, dset.name)
    if path.is_file() and not overwrite:
        try:
            same = read_description_file(path, dset.kind).content_hash == dset.content_hash
        except DescriptionsError:
            same = False
        if same:
            return path
        raise DescriptionsError(
            f"{path} exists with other content: choose another set name, or replace it "
            "(`fewshot describe --force`; in Python, overwrite=True)."
        )
    document = {
        "fewshot_descriptions": FORMAT_VERSION,
        "name": dset.name,
        "kind": dset.kind,
        "provenance": {k: v for k, v in dset.provenance.items() if k != "path"},
        "classes": {name: list(sentences) for name, sentences in dset.classes.items()},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(document, indent=1, ensure_ascii=False) + "\n")
    return path


# ------------------------------------------------------------------------------------------
# Listing


@dataclass(frozen=True)
class ListedSet:
    """One set present for a dataset, as ``fewshot list descriptions`` shows it."""

    name: str
    kind: str  # a kind, or "any" for a plain file read as whatever kind is asked
    classes: int
    sentences: int
    hash: str  # content hash (of the descriptions reading, for "any")
    source: str
    error: str = ""


def list_description_sets(dataset: str, data_root: Path | str | None) -> list[ListedSet]:
    """The sets present for ``dataset``: built-in toy sets, then files in name order."""
    from fewshot.descriptions.toy import TOY_SET, is_toy, toy_set

    out = [_listed(toy_set(dataset, kind), kind) for kind in KINDS] if is_toy(dataset) else []
    if data_root is None:
        return out
    folder = sets_dir(data_root, dataset)
    files = sorted(folder.glob("*.json")) if folder.is_dir() else []
    for path in files:
        if path.name.endswith(SIDECAR) or path.name.startswith(".") or (path.stem == TOY_SET and out):
            continue  # sidecars, temp files of writes in progress, files the built-in toy sets hide
        try:
            found = read_description_file(path)
            fixed = _is_native(path) or "kind" in _sidecar(path)
        except DescriptionsError as exc:
            out.append(ListedSet(path.stem, "?", 0, 0, "", "file", error=str(exc)))
            continue
        out.append(_listed(found, found.kind if fixed else "any"))
    return out


def _is_native(path: Path) -> bool:
    """Whether a (readable) file is in fewshot's own format."""
    return "fewshot_descriptions" in json.loads(path.read_bytes().decode("utf-8-sig"))


def _listed(dset: DescriptionSet, kind: str) -> ListedSet:
    sentences = sum(len(s) for s in dset.classes.values())
    source = str(dset.provenance.get("source") or dset.provenance.get("model") or "?")
    return ListedSet(dset.name, kind, len(dset.classes), sentences, dset.content_hash, source)
