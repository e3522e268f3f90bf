"""One validated plan for a sweep: options in, every run settled before the first one starts.

:meth:`SweepPlan.from_options` is the single place where user input becomes runs, for the
CLI (``fewshot run``, which only translates its options into this call) and the Python API
(:func:`fewshot.plan`, :func:`fewshot.sweep`, :func:`fewshot.run`) alike. It checks
everything that can be checked without images or weights, collects one line per problem and
raises them together as a :class:`PlanError`:

- the methods exist and each suits the protocol (``Adapter.protocols``);
- every ``--set key=value`` names a field of every selected method's config (a key some
  methods lack is rejected naming them; ``--set METHOD.key=value`` scopes it) and parses to
  the field's type;
- the datasets and suites exist and can be trained on under the protocol (evaluation-only
  datasets are targets, never sources); transfer protocols get their source and targets;
- shots and seeds are positive integers; backbone id, ``--aug-views``, ``--precision`` and
  ``--device`` are valid.

The plan holds every :class:`~fewshot.types.RunSpec` and the resolved config of each
(defaults < preset for protocol, shots and dataset < overrides), which is the config the run
uses and its record shows. What needs the data or the weights (the datasets being present,
the description sets of methods that read them, the backbone loading) is checked by
:meth:`SweepPlan.check_ready`, which the sweep calls before its first run and ``--dry-run``
skips (it marks missing datasets instead).
"""

from __future__ import annotations

import dataclasses
import itertools
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fewshot.precision import resolve_precision
from fewshot.types import (
    TRANSFER_PROTOCOLS,
    AdapterConfig,
    BackboneSpec,
    ConfigError,
    FewshotError,
    RunSpec,
    check_protocol,
)

if TYPE_CHECKING:
    from fewshot.methods.base import Adapter

__all__ = ["PlanError", "PlannedFit", "SweepPlan", "parse_sets", "resolve_config"]

DEFAULT_METHODS = ("zeroshot", "linear-probe", "coop")
DEFAULT_AUG_VIEWS = 10


class PlanError(ConfigError):
    """Bad input found while planning; ``problems`` holds one line each (no repeats)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(dict.fromkeys(problems))
        super().__init__("\n".join(self.problems))


def resolve_config(spec: RunSpec) -> AdapterConfig:
    """The config a run uses: the method's defaults < its preset for (protocol, shots,
    dataset) < the spec's overrides."""
    from fewshot.methods import METHODS

    config_cls = METHODS.get(spec.method).config_cls
    return config_cls.build(spec.protocol, spec.shots, dict(spec.overrides), dataset=spec.dataset)


@dataclass(frozen=True)
class PlannedFit:
    """One fit of the plan: its spec, resolved config, and the records it writes."""

    spec: RunSpec  # the fit spec (no target)
    config: AdapterConfig
    records: tuple[RunSpec, ...]  # the source's record and one per target, in order


@dataclass(frozen=True)
class SweepPlan:
    """Every run of a sweep, validated, with its resolved config."""

    fits: tuple[PlannedFit, ...]
    data_root: Path | None = None
    toy_default: bool = False  # no dataset was named: the toy suite runs

    @property
    def specs(self) -> list[RunSpec]:
        """Every record the sweep writes, in sweep order."""
        return [spec for fit in self.fits for spec in fit.records]

    def __len__(self) -> int:
        return len(self.specs)

    @classmethod
    def from_options(
        cls,
        methods: Iterable[str] | str | None = None,
        datasets: Iterable[str] | str | None = None,
        *,
        shots: Iterable[int | str] | int | str = (16,),
        seeds: Iterable[int | str] | int | str = (1, 2, 3),
        protocol: str = "fewshot",
        backbone: str = "toy",
        source: str | None = None,
        sets: Iterable[str] | Mapping[str, Any] | None = None,
        aug_views: int | str = DEFAULT_AUG_VIEWS,
        precision: str = "auto",
        device: str = "auto",
        data_root: Path | str | None = None,
    ) -> SweepPlan:
        """Validate the options and build the plan; raise :class:`PlanError` listing every
        problem. ``datasets`` takes dataset and suite names (default: the toy suite);
        ``sets`` takes ``key=value`` strings (or a mapping), ``METHOD.key=value`` scoped."""
        builder = _Builder(data_root=Path(data_root) if data_root is not None else None)
        return builder.build(
            _names(methods) or list(DEFAULT_METHODS),
            _names(datasets),
            shots=shots,
            seeds=seeds,
            protocol=protocol,
            backbone=backbone,
            source=source,
            sets=sets,
            aug_views=aug_views,
            precision=precision,
            device=device,
        )

    @classmethod
    def from_specs(cls, specs: Sequence[RunSpec], *, data_root: Path | str | None = None) -> SweepPlan:
        """A plan of given specs (the Python API's escape hatch), validated as
        :meth:`from_options` validates: methods and protocols, configs, trainable datasets.
        Specs that differ only in ``target`` share one fit, in the order given."""
        builder = _Builder(data_root=Path(data_root) if data_root is not None else None)
        groups: dict[RunSpec, list[RunSpec]] = {}
        for spec in specs:
            groups.setdefault(spec.fit_spec, []).append(spec)
        methods = list(dict.fromkeys(s.method for s in groups))
        for protocol in sorted({s.protocol for s in groups}):
            builder.check(_method_classes, methods, protocol)
        for name in sorted({s.dataset for s in groups}):
            builder.check(_check_trainable, name)
        configs = {fit: builder.check(resolve_config, fit) for fit in groups}
        if builder.problems:
            raise PlanError(builder.problems)
        fits = tuple(
            PlannedFit(fit, configs[fit], tuple(dict.fromkeys(members))) for fit, members in groups.items()
        )
        return cls(fits, builder.data_root)

    # -- after planning --------------------------------------------------------------------

    def datasets(self) -> list[str]:
        """Every dataset the sweep reads (sources and targets), in order."""
        names = [s.dataset for s in self.specs] + [s.target for s in self.specs if s.target]
        return list(dict.fromkeys(names))

    def missing(self) -> dict[str, str]:
        """Datasets not present under the data root, each with how to get it."""
        from fewshot.datasets import get_dataset

        out = {}
        for name in self.datasets():
            dataset = get_dataset(name, self.data_root)
            if not dataset.is_present():
                out[name] = dataset.fix_hint()
        return out

    def check_ready(self, *, backbone_device: str | None = None) -> None:
        """Fail before the first run on what would fail every run: missing datasets, missing
        or mismatched description sets, a backbone whose weights cannot be loaded.
        ``backbone_device`` loads the backbone there instead of on the runs' device (a driver
        whose runs go to GPU workers: ``cpu``)."""
        missing = self.missing()
        if missing:
            unset = (
                "No data root is set: pass --data-root DIR or set $FEWSHOT_DATA (where the datasets "
                "are, or are to be downloaded).\n"
                if self.data_root is None
                else ""
            )
            lines = [f"{name}: missing — {hint}" for name, hint in missing.items()]
            raise ConfigError(unset + "Datasets missing:\n  " + "\n  ".join(lines))
        self._check_knowledge()
        self._check_shots_fit()
        from fewshot.backbones import load_backbone  # torchvision: only once the cheap checks pass

        for backbone, device in sorted({(s.backbone, backbone_device or s.device) for s in self.specs}):
            load_backbone(backbone, device)

    def _check_knowledge(self) -> None:
        """The description sets of methods that read them (``Adapter.knowledge``) exist and
        match the classes of every dataset the fit reads, source and targets: one line each."""
        from fewshot.descriptions.wiring import knowledge_problems
        from fewshot.methods import METHODS

        fits = [
            (
                METHODS.get(f.spec.method),
                f.config,
                [f.spec.dataset, *(r.target for r in f.records if r.target)],
            )
            for f in self.fits
        ]
        problems = knowledge_problems(fits, self.data_root)
        if problems:
            raise PlanError(problems)

    def _check_shots_fit(self) -> None:
        """Shots above a dataset's largest class are refused before anything is sampled: every
        class would keep all its images, so such a K only pretends to be a setting."""
        from fewshot.datasets import get_dataset

        problems = []
        for name in dict.fromkeys(s.dataset for s in self.specs):
            asked = max(s.shots for s in self.specs if s.dataset == name)
            counts = Counter(get_dataset(name, self.data_root).splits().train.labels)
            largest = max(counts.values(), default=0)
            if asked > largest:
                problems.append(
                    f"--shots {asked} is more than {name} has in its largest class ({largest} train "
                    f"images): the largest usable value is {largest}."
                )
        if problems:
            raise PlanError(problems)


# ------------------------------------------------------------------------------------------
# Building


def _names(values: Iterable[str] | str | None) -> list[str]:
    """Names from a string or strings, comma lists allowed: "a,b" / ["a", "b,c"]."""
    if values is None:
        return []
    items = [values] if isinstance(values, str) else list(values)
    return [part.strip() for item in items for part in str(item).split(",") if part.strip()]


def _positive_ints(values: Iterable[int | str] | int | str, option: str) -> list[int]:
    single = isinstance(values, int | str | float) or not isinstance(values, Iterable)
    items = _names([str(v) for v in ([values] if single else values)])  # type: ignore[union-attr]
    out: list[int] = []
    for text in items:
        number = int(text) if re.fullmatch(r"\+?\d+", text) else 0
        if number < 1:
            raise ConfigError(f"{option} takes positive integers (comma-separated), got {text!r}.")
        out.append(number)
    if not out:
        raise ConfigError(f"{option} needs at least one value.")
    return list(dict.fromkeys(out))


def parse_sets(
    items: Iterable[str] | Mapping[str, Any] | None, methods: Sequence[str]
) -> dict[str, dict[str, str]]:
    """``key=value`` (every method) or ``METHOD.key=value`` (one method) -> per-method settings."""
    pairs = [f"{k}={v}" for k, v in items.items()] if isinstance(items, Mapping) else list(items or [])
    per_method: dict[str, dict[str, str]] = {m: {} for m in methods}
    for item in pairs:
        key, sep, value = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(
                f"Bad --set {item!r}: write key=value (e.g. --set n_ctx=4), or METHOD.key=value."
            )
        scope, dot, name = key.rpartition(".")
        if dot and scope in per_method:
            per_method[scope][name] = value.strip()
            continue
        if dot and scope:
            raise ConfigError(
                f"--set {item}: {scope!r} is not one of the selected methods ({', '.join(methods)})."
            )
        for method in methods:
            per_method[method][key] = value.strip()
    return per_method


def _check_aug_views(value: int | str) -> int:
    text = str(value).strip().lower()
    if text == "online":
        return 0
    if not re.fullmatch(r"\d+", text):
        raise ConfigError(f"--aug-views takes an integer >= 0 or 'online', got {value!r}.")
    return int(text)


def _resolve_device(device: str) -> str:
    if not re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", device):
        raise ConfigError(f"Bad --device {device!r}: use auto, cpu, cuda, cuda:N or mps.")
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@dataclass
class _Builder:
    """Collects one problem line per bad input instead of stopping at the first."""

    data_root: Path | None
    problems: list[str] = field(default_factory=list)

    def check(self, fn: Any, *args: Any) -> Any:
        try:
            return fn(*args)
        except FewshotError as exc:
            self.problems.extend(exc.problems if isinstance(exc, PlanError) else [str(exc)])
            return None

    def build(self, methods: list[str], names: list[str], **opts: Any) -> SweepPlan:
        protocol = self.check(check_protocol, opts["protocol"]) or ""
        classes = self.check(_method_classes, methods, protocol) or {}
        datasets, targets = self._datasets(names, protocol, opts["source"])
        shots = self.check(_positive_ints, opts["shots"], "--shots") or []
        seeds = self.check(_positive_ints, opts["seeds"], "--seeds") or []
        spec = self.check(BackboneSpec.parse, opts["backbone"])
        aug_views = self.check(_check_aug_views, opts["aug_views"])
        device = self.check(_resolve_device, opts["device"])
        precision = self.check(resolve_precision, opts["precision"], device or "cpu")
        settings = self.check(parse_sets, opts["sets"], methods) or {}
        if self.problems:
            self._check_settings_alone(classes, settings)
            raise PlanError(self.problems)
        common = {
            "protocol": protocol,
            "backbone": spec.id,
            "aug_views": aug_views,
            "device": device,
            "precision": precision,
        }
        fits = self._fits(classes, settings, datasets, targets, shots, seeds, common)
        if self.problems:
            raise PlanError(self.problems)
        return SweepPlan(tuple(fits), self.data_root, toy_default=not names)

    def _datasets(
        self, names: list[str], protocol: str, source: str | None
    ) -> tuple[list[str], tuple[str, ...]]:
        from fewshot.datasets import resolve_datasets
        from fewshot.protocols import transfer_plan

        if protocol in TRANSFER_PROTOCOLS:
            transfer = self.check(transfer_plan, protocol, names or ["toy"], source)
            datasets, targets = ([transfer[0]], transfer[1]) if transfer else ([], ())
        else:
            if source:
                self.problems.append(
                    "--source applies to --protocol cross-dataset or domain-generalization only."
                )
            datasets, targets = self.check(resolve_datasets, names or ["toy"]) or [], ()
        for name in datasets:
            self.check(_check_trainable, name)
        return datasets, targets

    def _fits(
        self,
        classes: dict[str, type[Adapter]],
        settings: dict[str, dict[str, str]],
        datasets: list[str],
        targets: tuple[str, ...],
        shots: list[int],
        seeds: list[int],
        common: dict[str, Any],
    ) -> list[PlannedFit]:
        """The grid methods x datasets x shots x seeds, each config resolved once."""
        self._check_set_keys(classes, settings)
        fits: list[PlannedFit] = []
        for method, cls in classes.items():
            overrides = tuple(sorted(settings.get(method, {}).items()))
            # A method that reads no support images gives one result per (dataset, seed): 0 shots.
            for dataset, k in itertools.product(datasets, shots if cls.uses_support else [0]):
                first = RunSpec(method, dataset, shots=k, overrides=overrides, **common)
                config = self.check(_config_of, first)  # the same for every seed
                for seed in seeds if config is not None else []:
                    spec = dataclasses.replace(first, seed=seed)
                    records = (spec, *(dataclasses.replace(spec, target=t) for t in targets))
                    fits.append(PlannedFit(spec, config, records))
        return fits

    def _check_settings_alone(
        self, classes: dict[str, type[Adapter]], settings: dict[str, dict[str, str]]
    ) -> None:
        """With other input wrong, bad --set keys and values still go into the same error."""
        self._check_set_keys(classes, settings)
        for method, cls in classes.items():
            if settings.get(method):
                self.check(_parsed_settings, method, cls, settings[method])

    def _check_set_keys(self, classes: dict[str, type[Adapter]], settings: dict[str, dict[str, str]]) -> None:
        """A key every selected method lacks is a typo; one some lack needs a scope."""
        keys = {key for values in settings.values() for key in values}
        for key in sorted(keys):
            given = [m for m in classes if key in settings.get(m, {})]
            lacking = [m for m in given if key not in classes[m].config_cls.field_names()]
            if not lacking:
                continue
            having = [m for m in classes if key in classes[m].config_cls.field_names()]
            value = settings[lacking[0]][key]
            if having:
                scoped = " ".join(f"--set {m}.{key}={value}" for m in having)
                self.problems.append(
                    f"--set {key}={value}: {', '.join(lacking)} has no setting {key!r} "
                    f"(only {', '.join(having)} has); scope it: {scoped}."
                )
            else:
                self.problems.append(_unknown_key(classes[lacking[0]], key, lacking))
            for method in lacking:
                settings[method].pop(key)


def _parsed_settings(method: str, cls: type[Adapter], values: dict[str, str]) -> AdapterConfig:
    """The config of ``values`` alone (no preset), its errors naming the method."""
    try:
        return cls.config_cls.build("fewshot", 1, values)
    except ConfigError as exc:
        raise ConfigError(f"{method}: {exc}") from None


def _config_of(spec: RunSpec) -> AdapterConfig:
    """:func:`resolve_config`, its errors naming the method."""
    try:
        return resolve_config(spec)
    except ConfigError as exc:
        raise ConfigError(f"{spec.method}: {exc}") from None


def _unknown_key(cls: type[Adapter], key: str, methods: list[str]) -> str:
    import difflib

    names = cls.config_cls.field_names()
    close = difflib.get_close_matches(key, names, n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"--set {key}: {', '.join(methods)} has no setting {key!r}.{hint} Settings: {', '.join(names)}."


def _method_classes(methods: list[str], protocol: str) -> dict[str, type[Adapter]]:
    from fewshot.methods import METHODS

    classes: dict[str, type[Adapter]] = {}
    problems: list[str] = []
    for name in dict.fromkeys(methods):
        try:
            cls = METHODS.get(name)
        except ConfigError as exc:
            problems.append(str(exc))
            continue
        if protocol and protocol not in cls.protocols:
            problems.append(
                f"{name} cannot run under --protocol {protocol}; it supports {', '.join(cls.protocols)}."
            )
        classes[name] = cls
    if problems:
        raise PlanError(problems)
    return classes


def _check_trainable(name: str) -> None:
    from fewshot.datasets import DATASETS

    DATASETS.get(name)(None).check_trainable()
