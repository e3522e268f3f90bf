"""Core data types shared by every part of fewshot.

Naming follows the anchors (timm, open_clip, lm-eval): ``...Spec`` is an immutable description
of *what* to run, ``...Config`` holds hyper-parameters, ``...Result`` holds outputs.
Everything here is cheap to import: torch is imported only for type checking.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Self, get_type_hints

if TYPE_CHECKING:
    import torch

__all__ = [
    "AdapterConfig",
    "BackboneSpec",
    "ConfigError",
    "DatasetSpec",
    "FeatureSet",
    "FewShotTask",
    "FewshotError",
    "Item",
    "LabelSpace",
    "LazyFeatureSet",
    "RunSpec",
    "Split",
    "Splits",
    "safe_name",
    "stable_hash",
]


class FewshotError(Exception):
    """A user-facing error: the message names the problem and the fix.

    The CLI prints the message (no traceback) and exits non-zero.
    """


class ConfigError(FewshotError, ValueError):
    """Bad user input: an unknown name, a bad value, an unusable file."""


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hex SHA-256 of the canonical JSON form of ``obj`` (sorted keys), cut to ``length``."""
    blob = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


_UNSAFE = re.compile(r"[^A-Za-z0-9._+=-]+")


def safe_name(text: str) -> str:
    """A filesystem-safe form of an identifier: runs of other characters become ``_``."""
    return _UNSAFE.sub("_", text).strip("_") or "_"


# ------------------------------------------------------------------------------------------
# Backbones


_WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


@dataclass(frozen=True)
class BackboneSpec:
    """A parsed backbone id.

    Accepted forms (one parser, :meth:`parse`):

    - ``toy``: the bundled micro CLIP (``fewshot/toyworld``).
    - ``ARCH:PRETRAINED``: an open_clip architecture and pretrained tag, named as open_clip
      names them, e.g. ``ViT-B-16:openai`` or ``ViT-B-32:laion2b_s34b_b79k``.
    - ``hf-hub:ORG/NAME``: an open_clip model on the Hugging Face hub (config + weights).
    - ``ARCH:/path/to/weights.pt``: an open_clip architecture with a local checkpoint file.
    """

    source: str  # "toy" | "open_clip" | "hf-hub" | "local"
    arch: str  # open_clip architecture name ("" for hf-hub)
    pretrained: str  # pretrained tag, hub repo, or checkpoint path ("" for toy)

    @classmethod
    def parse(cls, text: str) -> BackboneSpec:
        """Parse a backbone id; raise :class:`ConfigError` naming the accepted forms."""
        text = text.strip()
        if text == "toy":
            return cls("toy", "toy", "")
        if text.startswith("hf-hub:"):
            repo = text[len("hf-hub:") :]
            if repo.count("/") != 1 or not all(repo.split("/")):
                raise ConfigError(f"Bad backbone id {text!r}: write hf-hub:ORG/NAME.")
            return cls("hf-hub", "", repo)
        arch, sep, pretrained = text.partition(":")
        if not sep or not arch or not pretrained:
            raise ConfigError(
                f"Bad backbone id {text!r}. Use ARCH:PRETRAINED as open_clip names them "
                "(e.g. ViT-B-16:openai), hf-hub:ORG/NAME, ARCH:/path/to/checkpoint.pt, or toy. "
                "`fewshot list backbones` shows known ids."
            )
        if "/" in pretrained or "\\" in pretrained or pretrained.endswith(_WEIGHT_SUFFIXES):
            return cls("local", arch, pretrained)
        return cls("open_clip", arch, pretrained)

    @property
    def id(self) -> str:
        """The canonical string form; ``BackboneSpec.parse(spec.id) == spec``."""
        if self.source == "toy":
            return "toy"
        if self.source == "hf-hub":
            return f"hf-hub:{self.pretrained}"
        return f"{self.arch}:{self.pretrained}"

    @property
    def safe_name(self) -> str:
        """Filesystem-safe form, used for cache and result paths."""
        if self.source == "local":
            return safe_name(
                f"{self.arch}-local-{Path(self.pretrained).stem}-{stable_hash(self.pretrained, 8)}"
            )
        return safe_name(self.id)

    def __str__(self) -> str:
        return self.id


# ------------------------------------------------------------------------------------------
# Data


@dataclass(frozen=True)
class DatasetSpec:
    """What a dataset is: its name, class names (label order), and prompt templates."""

    name: str
    classnames: tuple[str, ...]
    template: str  # the single hand-crafted template; "{}" is the class name
    version: str = "1"
    split_source: str = ""  # e.g. "split_zhou_OxfordPets.json", "generated", "toyworld"
    templates: tuple[str, ...] = ()  # prompt ensemble; empty = OpenAI's ImageNet templates

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    def prompt(self, classname: str) -> str:
        return self.template.format(classname)


@dataclass(frozen=True)
class Item:
    """One labelled image: a path relative to the dataset folder, and a label id."""

    path: str
    label: int


@dataclass(frozen=True)
class Split:
    """An ordered list of items with a content hash."""

    name: str
    items: tuple[Item, ...]

    @cached_property
    def hash(self) -> str:
        return stable_hash([[it.path, it.label] for it in self.items])

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        return [it.label for it in self.items]


@dataclass(frozen=True)
class Splits:
    """train / val / test of one dataset.

    A dataset with no val split of its own (ImageNet) sets ``val`` to its train split: its
    few-shot val set is then drawn from the train images outside the support set
    (:func:`fewshot.protocols.sample_subset`), so nothing is ever selected on test images.
    """

    train: Split
    val: Split
    test: Split

    @property
    def val_is_train(self) -> bool:
        return self.val.hash == self.train.hash and len(self.train) > 0

    @property
    def hash(self) -> str:
        return stable_hash([self.train.hash, self.val.hash, self.test.hash])


@dataclass(frozen=True)
class LabelSpace:
    """A set of classes to train on or evaluate over, in order.

    ``labels`` are label ids of ``dataset``; position ``i`` in ``labels`` is class ``i`` of
    the space (base-to-novel relabels each group to 0..n-1 this way).
    """

    name: str  # "all", "base", "novel", or a target dataset's name
    dataset: str
    labels: tuple[int, ...]

    def relabel(self) -> dict[int, int]:
        return {label: i for i, label in enumerate(self.labels)}


@dataclass(frozen=True)
class FewShotTask:
    """One sampled few-shot problem: which support and val items, which label spaces."""

    dataset: str
    protocol: str
    shots: int
    seed: int
    split_hash: str
    train_ids: tuple[int, ...]  # indices into the train split
    val_ids: tuple[int, ...]  # indices into the val split
    train_space: LabelSpace
    eval_spaces: tuple[LabelSpace, ...]

    @cached_property
    def hash(self) -> str:
        return stable_hash(dataclasses.asdict(self))

    @property
    def subset_hash(self) -> str:
        """Hash of the sampled support and val items only."""
        return stable_hash([self.split_hash, self.train_ids, self.val_ids])


@dataclass
class FeatureSet:
    """Image features of a list of items, with the cache key that produced them.

    Features are the raw (not normalised) outputs of the image encoder, float32, on CPU.
    For augmented views, rows are view-major: row ``v * n + i`` is view ``v`` of item ``i``.
    """

    features: torch.Tensor  # (N, D)
    labels: torch.Tensor  # (N,) int64
    ids: tuple[str, ...]  # item paths, length N
    key: str = ""

    def __len__(self) -> int:
        return int(self.features.shape[0])

    def subset(self, index: Sequence[int]) -> FeatureSet:
        import torch

        idx = torch.as_tensor(list(index), dtype=torch.long)
        return FeatureSet(self.features[idx], self.labels[idx], tuple(self.ids[i] for i in index), self.key)


class LazyFeatureSet(FeatureSet):
    """A FeatureSet computed on first use.

    The runner hands augmented views to every method this way, so the views are encoded
    (and cached) only for methods that read them.
    """

    def __init__(self, compute: Callable[[], FeatureSet]) -> None:  # no dataclass fields set
        self._compute = compute
        self._value: FeatureSet | None = None

    def resolve(self) -> FeatureSet:
        if self._value is None:
            self._value = self._compute()
        return self._value

    features = property(lambda self: self.resolve().features)
    labels = property(lambda self: self.resolve().labels)
    ids = property(lambda self: self.resolve().ids)
    key = property(lambda self: self.resolve().key)

    def __repr__(self) -> str:
        return "LazyFeatureSet(computed)" if self._value is not None else "LazyFeatureSet(pending)"


# ------------------------------------------------------------------------------------------
# Configs


def _coerce(value: Any, annotation: Any, name: str) -> Any:
    """Turn a ``--set key=value`` string into the field's type."""
    if not isinstance(value, str):
        return value
    text = value.strip()
    ann = annotation.__name__ if isinstance(annotation, type) else str(annotation)
    if text.lower() in ("none", "null") and "None" in ann:
        return None
    try:
        if annotation is bool or ann == "bool":
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if annotation is int or ann.startswith("int"):
            return int(text)
        if annotation is float or ann.startswith("float"):
            return float(text)
        if ann.startswith("tuple"):
            parts = [p for p in text.replace(",", " ").split() if p]
            inner = ann[ann.find("[") + 1 : ann.find(",") if "," in ann else ann.find("]")]
            cast = {"int": int, "float": float}.get(inner.strip(), str)
            return tuple(cast(p) for p in parts)
    except ValueError:
        raise ConfigError(f"Bad value {value!r} for {name} (expected {ann}).") from None
    return text


@dataclass(frozen=True)
class AdapterConfig:
    """Base class of every method's hyper-parameter dataclass.

    Subclasses are frozen dataclasses with defaults. Values are resolved before a run
    starts, in this order, later wins: field defaults < :meth:`preset` for (protocol, shots,
    dataset) < user overrides (``--set key=value``). A method never changes its config
    while fitting: the config a record holds is the one that ran.
    """

    _presets_doc: ClassVar[str] = ""

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """Overrides of the defaults for a protocol, shot count and dataset (its registry
        name, e.g. ``imagenet``; for transfer protocols the dataset fitted on), e.g. CoOp's
        epochs per shot count and its 50 ImageNet epochs."""
        return {}

    @classmethod
    def build(
        cls,
        protocol: str = "fewshot",
        shots: int = 16,
        overrides: Mapping[str, Any] | None = None,
        *,
        dataset: str = "",
    ) -> Self:
        """Resolve defaults, preset and overrides into a config; unknown keys are an error."""
        names = [f.name for f in dataclasses.fields(cls)]
        hints = get_type_hints(cls)
        values: dict[str, Any] = dict(cls._preset(protocol, shots, dataset))
        for key, value in (overrides or {}).items():
            if key not in names:
                close = difflib.get_close_matches(key, names, n=3)
                hint = f" Did you mean {', '.join(close)}?" if close else ""
                raise ConfigError(
                    f"{cls.__name__} has no setting {key!r}.{hint} Settings: {', '.join(names) or '(none)'}."
                )
            values[key] = _coerce(value, hints[key], key)
        return cls(**values)

    @classmethod
    def _preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """:meth:`preset`, also for plugins written before presets saw the dataset."""
        if len(inspect.signature(cls.preset).parameters) == 2:  # preset(protocol, shots)
            return cls.preset(protocol, shots)  # type: ignore[call-arg]
        return cls.preset(protocol, shots, dataset)

    @classmethod
    def field_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls)]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ------------------------------------------------------------------------------------------
# Runs


PROTOCOLS = ("fewshot", "base2novel", "cross-dataset", "domain-generalization")
TRANSFER_PROTOCOLS = ("cross-dataset", "domain-generalization")  # fit on a source, score targets
SHOTS = (1, 2, 4, 8, 16)
RUN_PRECISIONS = ("fp32", "fp16", "bf16")


def check_protocol(protocol: str) -> str:
    """``protocol`` if it is one of :data:`PROTOCOLS`, else a ConfigError with a suggestion."""
    if protocol not in PROTOCOLS:
        close = difflib.get_close_matches(protocol, PROTOCOLS, n=1)
        hint = f" Did you mean {close[0]}?" if close else ""
        raise ConfigError(f"Unknown protocol {protocol!r}.{hint} Protocols: {', '.join(PROTOCOLS)}.")
    return protocol


@dataclass(frozen=True)
class RunSpec:
    """One record: a method (with overrides) on one dataset, shot count, seed and protocol.

    For ``cross-dataset`` and ``domain-generalization``, ``dataset`` is the source the method
    is fitted on and ``target`` the dataset this record evaluates (empty: the source's own
    test split). Specs that differ only in ``target`` share one fit (:attr:`fit_spec`).
    """

    method: str
    dataset: str
    shots: int = 16
    seed: int = 1
    protocol: str = "fewshot"
    backbone: str = "toy"
    overrides: tuple[tuple[str, str], ...] = ()  # --set key=value, sorted
    aug_views: int = 10  # augmented views per support image; 0 = online augmentation
    target: str = ""  # cross-dataset / domain-generalization: the dataset evaluated ("" = the source)
    device: str = "cpu"
    precision: str = "fp32"  # fp32 | fp16 | bf16 (autocast), resolved from --precision by the plan

    def __post_init__(self) -> None:
        if self.shots < 0:
            raise ConfigError(
                f"--shots must be a positive integer (0 only for methods that read no support "
                f"images), got {self.shots}. Standard: 1,2,4,8,16."
            )
        check_protocol(self.protocol)
        if self.aug_views < 0:
            raise ConfigError(f"--aug-views must be >= 0 or 'online', got {self.aug_views}.")
        if self.target and self.protocol not in TRANSFER_PROTOCOLS:
            raise ConfigError(
                f"A target dataset ({self.target}) needs protocol cross-dataset or "
                f"domain-generalization, not {self.protocol}."
            )
        if self.target == self.dataset and self.target:
            raise ConfigError(f"Target {self.target} is the source itself; leave target empty for it.")
        if self.precision not in RUN_PRECISIONS:
            raise ConfigError(
                f"A run's precision is one of {', '.join(RUN_PRECISIONS)}, got {self.precision!r} "
                "(--precision auto is resolved by the plan)."
            )
        object.__setattr__(self, "overrides", tuple(sorted(self.overrides)))

    @property
    def fit_spec(self) -> RunSpec:
        """The spec of the fit this record evaluates: the same spec without a target."""
        return dataclasses.replace(self, target="") if self.target else self

    @property
    def variant(self) -> str:
        """The method name plus any non-default settings, e.g. ``coop[n_ctx=4]``."""
        extras = [f"{k}={v}" for k, v in self.overrides]
        if self.aug_views != 10:
            extras.append(f"aug_views={self.aug_views or 'online'}")
        return f"{self.method}[{','.join(extras)}]" if extras else self.method

    @property
    def hash(self) -> str:
        """Identity of the run's result; the device is not part of it."""
        data = dataclasses.asdict(self)
        data.pop("device")
        # Hashed as a list, the form records written before per-target records had.
        data["targets"] = [data.pop("target")] if self.target else []
        if self.precision == "fp32":  # fp32 records from before the precision field keep their hash
            data.pop("precision")
        return stable_hash(data)

    def record_path(self, root: Path) -> Path:
        """Where this run's record lives under a results folder."""
        backbone = BackboneSpec.parse(self.backbone).safe_name
        to = f"-to-{safe_name(self.target)}" if self.target else ""
        precision = f"-{self.precision}" if self.precision != "fp32" else ""
        name = f"{self.protocol}-k{self.shots}-s{self.seed}{to}{precision}.json"
        return Path(root) / safe_name(self.dataset) / backbone / safe_name(self.variant) / name

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["overrides"] = [list(kv) for kv in self.overrides]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunSpec:
        data = dict(data)
        data["overrides"] = tuple(tuple(kv) for kv in data.get("overrides", ()))
        targets = data.pop("targets", ())  # records from before per-target records
        if targets and not data.get("target"):
            data["target"] = str(targets[0])
        return cls(**data)


@dataclass
class RunResult:
    """The outcome of one run: spec, metrics per label space, costs, provenance.

    ``metrics`` maps a label-space name ("all", "base", "novel", or a target dataset) to
    top-1 accuracy in percent; ``None`` marks a space the method cannot classify (not
    applicable, e.g. novel classes for a linear probe). ``status`` is "ok" or "failed".
    """

    spec: RunSpec
    status: str = "ok"
    metrics: dict[str, float | None] = field(default_factory=dict)
    costs: dict[str, float] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    schema_version: int = 1

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["spec"] = self.spec.to_dict()
        data["spec_hash"] = self.spec.hash
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunResult:
        data = dict(data)
        data.pop("spec_hash", None)
        data["spec"] = RunSpec.from_dict(data["spec"])
        return cls(**data)


__all__ += ["PROTOCOLS", "RUN_PRECISIONS", "SHOTS", "TRANSFER_PROTOCOLS", "RunResult", "check_protocol"]
