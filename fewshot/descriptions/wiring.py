"""How description sets reach methods, records and plans.

A method declares the kinds it reads in ``Adapter.knowledge`` (and, per config,
``Adapter.knowledge_read``); its config names the set of each kind in the field of the same
name (``config.descriptions = "dclip"``; an empty name means none of that kind). For every
dataset a run reads (the source it is fitted on, each target it is scored on) the runner
loads those sets (:func:`load_knowledge`) and passes them in ``FitContext`` /
``QueryBatch``. The record keeps ``provenance["knowledge"]`` (the fitted sets,
:func:`knowledge_record`) and, for a target, ``provenance["target_knowledge"]``;
:func:`knowledge_label` turns both into the records frame's ``knowledge`` column, which the
leaderboard never averages across. The plan checks that every set exists and matches
(:func:`knowledge_problems`) before the first run.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from fewshot.descriptions.files import load_description_set
from fewshot.descriptions.sets import KINDS, DescriptionsError, DescriptionSet, MissingDescriptionsError
from fewshot.types import AdapterConfig, ConfigError, RunSpec

__all__ = [
    "knowledge_changed",
    "knowledge_label",
    "knowledge_names",
    "knowledge_problems",
    "knowledge_record",
    "load_knowledge",
    "missing_line",
]


def knowledge_names(method_cls: type, config: AdapterConfig) -> dict[str, str]:
    """Kind -> set name, from the config fields named after the kinds the config reads
    (``knowledge_read``, else ``knowledge``); kinds set to "" (none) are absent."""
    names: dict[str, str] = {}
    read = getattr(method_cls, "knowledge_read", None)
    kinds = read(config) if read is not None else getattr(method_cls, "knowledge", ())
    for kind in kinds:
        if kind not in KINDS:
            raise ConfigError(
                f"{method_cls.__name__}.knowledge names {kind!r}; the kinds are {', '.join(KINDS)}."
            )
        if not hasattr(config, kind):
            raise ConfigError(
                f"{method_cls.__name__} declares knowledge {kind!r} but its config has no `{kind}` "
                "setting naming the set."
            )
        name = str(getattr(config, kind) or "")
        if name:
            names[kind] = name
    return names


def load_knowledge(
    method_cls: type, config: AdapterConfig, dataset: str, data_root: Path | None
) -> dict[str, DescriptionSet]:
    """Kind -> the set the config names, loaded for ``dataset`` (empty for other methods)."""
    return {
        kind: load_description_set(dataset, name, kind, data_root)
        for kind, name in knowledge_names(method_cls, config).items()
    }


def knowledge_record(sets: Mapping[str, DescriptionSet]) -> dict[str, dict[str, str]]:
    """What a record keeps of the sets: kind -> {name, kind, hash}."""
    return {kind: dset.record() for kind, dset in sorted(sets.items())}


def knowledge_now(spec: RunSpec, data_root: Path | None) -> dict[str, Any]:
    """The ``knowledge`` (and ``target_knowledge``) provenance a run of ``spec`` would record
    with the sets as they are now; empty for a method that reads none."""
    from fewshot.methods import METHODS
    from fewshot.planning import resolve_config

    method_cls = METHODS.get(spec.method)
    if not getattr(method_cls, "knowledge", ()):
        return {}
    config = resolve_config(spec.fit_spec)
    sets = load_knowledge(method_cls, config, spec.dataset, data_root)
    if not sets:  # only optional kinds, left empty: the runner records nothing
        return {}
    now = {"knowledge": knowledge_record(sets)}
    if spec.target:
        now["target_knowledge"] = knowledge_record(load_knowledge(method_cls, config, spec.target, data_root))
    return now


def knowledge_changed(spec: RunSpec, provenance: Mapping[str, Any], data_root: Path | None) -> bool:
    """Whether a record of ``spec`` was made with other sets (or set contents) than the
    current ones: the sweep reruns it as stale. A set that cannot be loaded counts as a
    change (the run then fails, saying why)."""
    try:
        now = knowledge_now(spec, data_root)
    except DescriptionsError:
        return True
    return any(provenance.get(key) != value for key, value in now.items())


def knowledge_label(provenance: Mapping[str, Any]) -> str:
    """One string naming every set a record used, e.g. ``descriptions=dclip@1a2b…`` (with
    ``target:`` sets after ``|``); "" for records made without sets."""
    parts = []
    for key, prefix in (("knowledge", ""), ("target_knowledge", "target:")):
        sets = provenance.get(key) or {}
        if isinstance(sets, Mapping):
            parts += [
                f"{prefix}{kind}={rec.get('name', '?')}@{rec.get('hash', '?')}"
                for kind, rec in sorted(sets.items())
                if isinstance(rec, Mapping)
            ]
    return "|".join(parts)


def missing_line(dataset: str, kind: str, name: str) -> str:
    """The one line the plan gives for a set that does not exist."""
    return (
        f"{dataset}: no {kind} set {name!r} — get one with `fewshot data download descriptions` "
        f"or `fewshot describe {dataset}` (`fewshot list descriptions` shows what is there)."
    )


def knowledge_problems(
    fits: Iterable[tuple[type, AdapterConfig, Iterable[str]]], data_root: Path | None
) -> list[str]:
    """One line per set that a planned fit needs and cannot load: ``fits`` gives the method
    class, resolved config and datasets read (source and targets) of each fit."""
    problems: list[str] = []
    seen: set[tuple[str, str, str]] = set()
    for method_cls, config, datasets in fits:
        if not getattr(method_cls, "knowledge", ()):
            continue
        try:
            names = knowledge_names(method_cls, config)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        for dataset in datasets:
            for kind, name in names.items():
                if (dataset, kind, name) in seen:
                    continue
                seen.add((dataset, kind, name))
                try:
                    load_description_set(dataset, name, kind, data_root)
                except MissingDescriptionsError:
                    problems.append(missing_line(dataset, kind, name))
                except DescriptionsError as exc:
                    problems.append(str(exc))
    return problems
