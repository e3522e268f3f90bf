"""The Adapter contract: what every few-shot method implements.

The harness owns data, caching, seeds, devices, precision, progress and scoring. A method
owns only its math: ``fit(ctx)`` on the support set, ``predict(batch)`` to logits over the
class names it is given. ``FitContext`` carries no test data, so a method cannot select
epochs or hyper-parameters on the test set; the few-shot val set is there for that.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from fewshot.types import PROTOCOLS, AdapterConfig, FeatureSet
from fewshot.workload import StepCost

if TYPE_CHECKING:
    from fewshot.backbones import Backbone
    from fewshot.descriptions import DescriptionSet
    from fewshot.stages import StageCache

__all__ = ["Adapter", "FitContext", "ImageSource", "Needs", "QueryBatch"]


class Needs(enum.Enum):
    """What a method's ``predict`` needs to see of a query image."""

    FEATURES = "features"  # cached frozen image features are enough
    IMAGES = "images"  # images pass through the (prompted) image encoder


class ImageSource(Protocol):
    """Images of a few-shot subset (support or val), loaded by the harness.

    ``loader`` yields ``(images, labels)`` batches: images preprocessed to a float tensor
    (B, 3, H, W) on CPU, labels relabelled to the training label space. With
    ``augment=True`` every pass draws fresh training augmentations (Dassl's random resized
    crop + flip); with ``augment=False`` the test transform is used. ``drop_last`` drops a
    last incomplete batch (Dassl does so for training when the set holds a full batch).
    :meth:`derive` gives the same images with other labels or another backbone's transforms.
    """

    def __len__(self) -> int: ...

    def loader(
        self,
        batch_size: int,
        *,
        augment: bool,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterable[tuple[torch.Tensor, torch.Tensor]]: ...

    def derive(self, *, labels: Sequence[int] | None = None, backbone: Backbone | None = None) -> ImageSource:
        """The same images with other ``labels`` (e.g. row indices, to know which image a
        shuffled batch holds) and/or another ``backbone``'s transforms (images for a second
        model, e.g. a matching backbone)."""
        ...


@dataclass
class FitContext:
    """Everything a method may use while fitting. There is no test split here, except for
    methods whose :meth:`Adapter.reads_test` is true for their config (a released protocol
    that selects on test, kept for reproduction): only then does the runner fill
    ``full_val`` and ``test_for_selection``, and mark the records ``selected_on_test``.

    Labels in every FeatureSet and loader are relabelled to ``classnames`` order (0..C-1).
    """

    classnames: list[str]  # the training label space
    template: str  # the dataset's single hand-crafted template, "{}" = class name
    templates: list[str]  # the prompt ensemble for this dataset
    backbone: Backbone
    train: FeatureSet  # support features, test transform, one row per support image
    train_views: FeatureSet | None  # V augmented views of the support set (view-major), None if online
    val: FeatureSet  # few-shot val features, test transform
    train_images: ImageSource  # support images, for online augmentation or IMAGES methods
    val_images: ImageSource  # few-shot val images
    shots: int
    seed: int
    generator: torch.Generator  # seeded for this run; use it for every random draw
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dataset: str = ""
    # Language knowledge for methods that declare it in Adapter.knowledge (else None): the
    # dataset's sets, covering every class of the dataset, not only the training ones.
    descriptions: DescriptionSet | None = None
    synonyms: DescriptionSet | None = None
    progress: Callable[[int, str], Iterator[int]] | None = None
    autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
    # Only for Adapter.reads_test(config) (else None): the whole val split (None where the
    # dataset has no val split of its own, e.g. ImageNet) and the test split, restricted to
    # the training classes and relabelled (raw features, test transform).
    full_val: FeatureSet | None = None
    test_for_selection: FeatureSet | None = None
    # Where a long stage of the fit (fine-tuning a backbone) keeps its result and partial
    # state, so that a rerun resumes it; None: the stage runs uncached (e.g. unit tests).
    stages: StageCache | None = None

    def epochs(self, n: int, description: str = "epochs") -> Iterator[int]:
        """``range(n)`` with a progress bar owned by the harness."""
        if self.progress is None:
            return iter(range(n))
        return self.progress(n, description)


@dataclass
class QueryBatch:
    """A batch of query images to classify over ``classnames``.

    For ``Needs.FEATURES`` methods ``features`` holds the frozen encoder's raw (unnormalised)
    features; for ``Needs.IMAGES`` methods ``images`` holds preprocessed images (test
    transform). Both are on the run's device.
    """

    classnames: list[str]
    template: str
    features: torch.Tensor | None = None  # (B, D)
    images: torch.Tensor | None = None  # (B, 3, H, W)
    templates: list[str] = field(default_factory=list)
    # The query dataset's sets, for methods that declare them in Adapter.knowledge (a
    # cross-dataset target brings its own); they cover every name in ``classnames``.
    descriptions: DescriptionSet | None = None
    synonyms: DescriptionSet | None = None


class Adapter(abc.ABC):
    """One few-shot adaptation method.

    Subclasses set ``config_cls`` (a frozen :class:`AdapterConfig` dataclass), ``needs`` and
    ``supports_novel``, and implement :meth:`fit` and :meth:`predict`. The runner builds the
    adapter as ``cls(config)``.
    """

    config_cls: ClassVar[type[AdapterConfig]] = AdapterConfig
    needs: ClassVar[Needs] = Needs.FEATURES
    supports_novel: bool = True  # can it classify class names it was not trained on? (may be per instance)
    protocols: ClassVar[tuple[str, ...]] = PROTOCOLS  # the protocols it can be run under
    # False for methods whose fit reads no support image (zero-shot, training-free scorers):
    # their result does not depend on the shot count, so a sweep plans them once, at 0 shots.
    uses_support: ClassVar[bool] = True
    # Kinds of language knowledge (fewshot.descriptions.KINDS) the method needs; the runner
    # loads the set its config names (config field of the same name) for each dataset.
    knowledge: ClassVar[tuple[str, ...]] = ()
    version: ClassVar[str] = "1"  # bump when a change alters results; runs of two versions never average

    def __init__(self, config: AdapterConfig | None = None) -> None:
        self.config = config if config is not None else self.config_cls()

    @classmethod
    def knowledge_read(cls, config: AdapterConfig) -> tuple[str, ...]:
        """The kinds of ``knowledge`` a run with ``config`` reads (the runner loads, records
        and checks only those). Default: all of them."""
        return cls.knowledge

    @abc.abstractmethod
    def fit(self, ctx: FitContext) -> None:
        """Learn from the support set (and, for selection, the few-shot val set)."""

    @abc.abstractmethod
    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """Logits of shape (B, len(batch.classnames))."""

    def trainable_parameters(self) -> int:
        """Number of learned scalars (reported as a cost). Default: parameters of nn.Modules
        held as attributes that require grad, plus tensors the subclass lists itself."""
        total = 0
        for value in vars(self).values():
            if isinstance(value, torch.nn.Module):
                total += sum(p.numel() for p in value.parameters() if p.requires_grad)
        return total

    @classmethod
    def step_cost(cls, config: AdapterConfig, classnames: list[str], online: bool) -> StepCost:
        """What one optimiser step runs through the encoders, for ``fewshot run --dry-run``'s
        estimate of a sweep's work (``online``: augmentation without cached views). Default:
        nothing (a method without optimiser steps)."""
        return StepCost()

    @classmethod
    def reads_test(cls, config: AdapterConfig) -> bool:
        """True when this config reproduces a protocol that selects on test data: the runner
        then adds the full val split and the test split to the FitContext and sets
        ``selected_on_test`` in the records. Default: never."""
        return False

    def selected(self) -> dict[str, Any]:
        """Hyper-parameters the method chose while fitting (on the few-shot val set, or on
        the support set for training-free searches), e.g. ``{"alpha": 0.4}``. JSON-ready
        values; kept in the record's provenance. Default: none."""
        return {}

    def fit_provenance(self) -> dict[str, Any]:
        """What the fit made or read that decides its results beyond the config and the
        knowledge sets, e.g. the digest of fine-tuned weights or where captions came from.
        JSON-ready values; kept in the record's provenance as ``fit``. Default: none."""
        return {}

    def extra_costs(self) -> dict[str, float]:
        """Method-specific costs merged into the record's ``costs`` (e.g. CoCoOp's count of
        prompts run through the text tower, which grows with batch x classes). Default: none."""
        return {}
