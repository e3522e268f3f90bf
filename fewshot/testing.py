"""The Adapter contract check, and small fakes, for our tests and for plugin authors.

A plugin author's CI can run the same check as our contract test::

    from fewshot.testing import check_adapter
    check_adapter(MyAdapter)                      # fast settings, toy backbone, toy-shapes
    check_adapter(MyAdapter, overrides={"epochs": 1})

Everything runs on the bundled toy backbone and a toy dataset, on CPU, in seconds, and
writes nothing to disk: features are computed here directly, not through the feature cache.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.types import AdapterConfig, FeatureSet, Item

if TYPE_CHECKING:
    from PIL import Image

    from fewshot.backbones import Backbone

__all__ = ["FAST_SETTINGS", "FakeImages", "check_adapter", "make_fit_context", "make_query_batch"]

FAST_SETTINGS: dict[str, Any] = {"epochs": 2}
"""Overrides applied by :func:`check_adapter` to configs that have these fields."""


class FakeImages:
    """An in-memory :class:`~fewshot.methods.base.ImageSource` over PIL images.

    Augmented passes run ``backbone.train_transform`` under torch's RNG seeded from the
    ``generator`` given to :meth:`loader`, so a seeded generator reproduces them.
    """

    def __init__(self, images: Sequence[Image.Image], labels: Sequence[int], backbone: Backbone) -> None:
        self.images, self.labels, self.backbone = list(images), torch.as_tensor(list(labels)), backbone

    def __len__(self) -> int:
        return len(self.images)

    def derive(self, *, labels: Sequence[int] | None = None, backbone: Backbone | None = None) -> FakeImages:
        """The same images with other ``labels`` and/or ``backbone``'s transforms."""
        chosen = self.labels.tolist() if labels is None else list(labels)
        return FakeImages(self.images, chosen, backbone if backbone is not None else self.backbone)

    def loader(
        self,
        batch_size: int,
        *,
        augment: bool,
        shuffle: bool,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One pass of ``(images (B, 3, H, W), labels (B,))`` batches."""
        n = len(self.images)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        if drop_last:
            order = order[: n - n % batch_size]
        if len(order) == 0:
            return iter(())
        seed = int(torch.randint(0, 2**62, (1,), generator=generator)) if augment else 0
        transform = self.backbone.train_transform if augment else self.backbone.preprocess
        with torch.random.fork_rng(devices=[]):  # leave the caller's global RNG untouched
            torch.manual_seed(seed)
            pixels = torch.stack([transform(self.images[i]) for i in order.tolist()])
        labels = self.labels[order]
        return iter(zip(torch.split(pixels, batch_size), torch.split(labels, batch_size), strict=True))


def _encode(backbone: Backbone, images: Sequence[Image.Image], transform: Any) -> torch.Tensor:
    pixels = torch.stack([transform(image) for image in images])
    return backbone.encode_images(pixels).float().cpu()


def _feature_set(
    backbone: Backbone, images: list[Image.Image], labels: list[int], ids: list[str]
) -> FeatureSet:
    features = _encode(backbone, images, backbone.preprocess)
    return FeatureSet(features, torch.tensor(labels), tuple(ids), key="fewshot.testing")


def _views(
    backbone: Backbone, images: list[Image.Image], labels: list[int], ids: list[str], views: int
) -> FeatureSet:
    """View-major augmented views, each view seeded by its index (reproducible)."""
    rows = []
    for view in range(views):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(view)
            rows.append(_encode(backbone, images, backbone.train_transform))
    return FeatureSet(
        torch.cat(rows), torch.tensor(labels * views), tuple(ids) * views, key="fewshot.testing"
    )


def _resolve(backbone: str | Backbone) -> Backbone:
    from fewshot.backbones import load_backbone

    return load_backbone(backbone) if isinstance(backbone, str) else backbone


def _pick(items: Sequence[Item], classes: Sequence[int], per_class: int, seed: int) -> list[Item]:
    """``per_class`` items of each label in ``classes`` (seeded), in class order."""
    from fewshot.protocols import sample_fewshot
    from fewshot.types import Split

    relabel = {label: i for i, label in enumerate(classes)}
    kept = Split("pick", tuple(it for it in items if it.label in relabel))
    picked = [kept.items[i] for i in sample_fewshot(kept, per_class, seed)]
    return sorted(picked, key=lambda it: relabel[it.label])


def make_fit_context(
    backbone: str | Backbone = "toy",
    dataset: str = "toy-shapes",
    *,
    classes: Sequence[int] = (0, 1, 2),
    shots: int = 2,
    seed: int = 1,
    aug_views: int = 2,
    sets: str | None = "toy",
) -> FitContext:
    """A small FitContext on a toy dataset: ``shots`` support images of each of ``classes``
    (label ids, relabelled 0..C-1 in this order), ``min(shots, 4)`` val images per class,
    ``aug_views`` cached augmented views (0 = online augmentation only). No test data.
    ``sets``: the description sets of both kinds attached (the toy world's built-in ``toy``
    sets, covering every class of the dataset; None: none)."""
    from fewshot.datasets import get_dataset

    bb, data = _resolve(backbone), get_dataset(dataset)
    spec, splits = data.spec(), data.splits()
    relabel = {label: i for i, label in enumerate(classes)}

    def load(items: list[Item]) -> tuple[list[Image.Image], list[int], list[str]]:
        return (
            [data.load_image(it) for it in items],
            [relabel[it.label] for it in items],
            [it.path for it in items],
        )

    train_images, train_labels, train_ids = load(_pick(splits.train.items, classes, shots, seed))
    val_images, val_labels, val_ids = load(_pick(splits.val.items, classes, min(shots, 4), seed + 1))
    return FitContext(
        classnames=[spec.classnames[label] for label in classes],
        template=spec.template,
        templates=list(spec.templates),
        backbone=bb,
        train=_feature_set(bb, train_images, train_labels, train_ids),
        train_views=_views(bb, train_images, train_labels, train_ids, aug_views) if aug_views else None,
        val=_feature_set(bb, val_images, val_labels, val_ids),
        train_images=FakeImages(train_images, train_labels, bb),
        val_images=FakeImages(val_images, val_labels, bb),
        shots=shots,
        seed=seed,
        generator=torch.Generator().manual_seed(seed),
        device=bb.device,
        dataset=dataset,
        **_sets(dataset, sets),
    )


def _sets(dataset: str, name: str | None) -> dict[str, Any]:
    """``descriptions`` and ``synonyms`` of ``dataset`` named ``name`` (None: none; the
    built-in ``toy`` sets exist only for toy datasets)."""
    from fewshot.descriptions import KINDS, load_description_set
    from fewshot.descriptions.toy import TOY_SET, is_toy

    if not name or (name == TOY_SET and not is_toy(dataset)):
        return dict.fromkeys(KINDS)
    return {kind: load_description_set(dataset, name, kind, None) for kind in KINDS}


def make_query_batch(
    backbone: str | Backbone = "toy",
    dataset: str = "toy-shapes",
    *,
    classes: Sequence[int] = (0, 1, 2),
    per_class: int = 2,
    needs: Needs = Needs.FEATURES,
    sets: str | None = "toy",
) -> QueryBatch:
    """Test images of ``classes`` as a QueryBatch over their class names: raw features for
    ``Needs.FEATURES``, preprocessed images for ``Needs.IMAGES`` (only what ``needs`` asks);
    ``sets`` as for :func:`make_fit_context`."""
    from fewshot.datasets import get_dataset

    bb, data = _resolve(backbone), get_dataset(dataset)
    spec = data.spec()
    images = [data.load_image(it) for it in _pick(data.splits().test.items, classes, per_class, seed=0)]
    pixels = torch.stack([bb.preprocess(image) for image in images]).to(bb.device)
    return QueryBatch(
        classnames=[spec.classnames[label] for label in classes],
        template=spec.template,
        templates=list(spec.templates),
        features=bb.encode_images(pixels) if needs is Needs.FEATURES else None,
        images=pixels if needs is Needs.IMAGES else None,
        **_sets(dataset, sets),
    )


def _fail(cls: type, message: str) -> AssertionError:
    return AssertionError(f"{cls.__name__}: {message}")


def _check_declarations(cls: type[Adapter]) -> None:
    """Class-level parts of the contract: config class, needs, supports_novel, knowledge."""
    if not isinstance(cls, type) or not issubclass(cls, Adapter):
        raise AssertionError(f"{cls!r} is not a subclass of fewshot.methods.base.Adapter.")
    config_cls = cls.config_cls
    if not (isinstance(config_cls, type) and issubclass(config_cls, AdapterConfig)):
        raise _fail(cls, f"config_cls must subclass AdapterConfig, got {config_cls!r}.")
    params = vars(config_cls).get("__dataclass_params__")  # its own, not AdapterConfig's
    if params is None or not params.frozen:
        raise _fail(cls, f"config_cls {config_cls.__name__} must be decorated with @dataclass(frozen=True).")
    if not isinstance(cls.needs, Needs):
        raise _fail(cls, f"needs must be a fewshot.methods.base.Needs, got {cls.needs!r}.")
    if not isinstance(cls.supports_novel, bool):
        raise _fail(cls, f"supports_novel must be a bool, got {cls.supports_novel!r}.")
    from fewshot.descriptions import KINDS

    for kind in cls.knowledge:
        if kind not in KINDS or kind not in config_cls.field_names():
            raise _fail(
                cls,
                f"knowledge names {kind!r}: each must be one of {', '.join(KINDS)} and a config field "
                "of the same name holding the set's name.",
            )


def _predict(adapter: Adapter, batch: QueryBatch) -> torch.Tensor:
    """``predict`` as the runner calls it (no grad), with its output checked."""
    cls, expected = type(adapter), (_batch_size(batch), len(batch.classnames))
    try:
        with torch.no_grad():
            logits = adapter.predict(batch)
    except Exception as exc:
        raise _fail(cls, f"predict raised {type(exc).__name__}: {exc}") from exc
    if not isinstance(logits, torch.Tensor) or not logits.is_floating_point():
        raise _fail(
            cls,
            f"predict must return a float tensor, got {type(logits).__name__} {getattr(logits, 'dtype', '')}",
        )
    if tuple(logits.shape) != expected:
        raise _fail(cls, f"predict returned shape {tuple(logits.shape)}, expected (B, C) = {expected}.")
    if not torch.isfinite(logits).all():
        raise _fail(cls, "predict returned non-finite logits (nan or inf).")
    return logits.detach().float().cpu()


def _batch_size(batch: QueryBatch) -> int:
    data = batch.features if batch.features is not None else batch.images
    return 0 if data is None else int(data.shape[0])


@contextmanager
def _seeded(seed: int) -> Iterator[None]:
    """Seed Python, numpy and torch as the runner does before ``fit``; restore them after."""
    py_state, np_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        random.seed(seed)
        np.random.seed(seed)
        torch.manual_seed(seed)
        try:
            yield
        finally:
            random.setstate(py_state)
            np.random.set_state(np_state)


def _fit(cls: type[Adapter], config: AdapterConfig, ctx: FitContext) -> Adapter:
    adapter = cls(config)
    try:
        with _seeded(ctx.seed):
            adapter.fit(ctx)
    except Exception as exc:
        raise _fail(cls, f"fit raised {type(exc).__name__}: {exc}") from exc
    if adapter.config is not config or adapter.config != config:
        raise _fail(
            cls,
            "fit changed its config; the record must hold the config that ran: put per-dataset "
            "rules in the config's preset(protocol, shots, dataset) instead.",
        )
    return adapter


def check_adapter(
    cls: type[Adapter],
    *,
    backbone: str | Backbone = "toy",
    shots: int = 2,
    overrides: Mapping[str, Any] | None = None,
    dataset: str = "toy-shapes",
    seed: int = 1,
) -> None:
    """Run the Adapter contract on the toy backbone; raise AssertionError on a breach.

    Checks: ``config_cls`` is a frozen AdapterConfig dataclass; ``needs`` is a Needs;
    ``fit`` runs on a FitContext with no test data and leaves the config as it was given;
    ``predict`` returns finite float logits (B, C) over the training classes and, if the
    adapter supports novel classes, (B, C') over
    other class names; the same seed gives identical logits twice (global RNGs are seeded
    before ``fit`` as the runner does, so only state outside the seed can break this).
    ``overrides`` apply on top of :data:`FAST_SETTINGS` (kept for fields the config has).
    """
    _check_declarations(cls)
    names = {f.name for f in dataclasses.fields(cls.config_cls)}
    settings = {k: v for k, v in FAST_SETTINGS.items() if k in names} | dict(overrides or {})
    config = cls.config_cls.build("fewshot", shots, settings)
    bb = _resolve(backbone)
    num_classes = len(_dataset_classes(dataset))
    base = tuple(range(min(3, num_classes)))
    novel = tuple(range(len(base), min(len(base) + 2, num_classes)))

    def fitted() -> Adapter:
        return _fit(cls, config, make_fit_context(bb, dataset, classes=base, shots=shots, seed=seed))

    adapter = fitted()
    query = make_query_batch(bb, dataset, classes=base, needs=cls.needs)
    logits = _predict(adapter, query)
    count = adapter.trainable_parameters()
    if not isinstance(count, int) or count < 0:
        raise _fail(cls, f"trainable_parameters() must return an int >= 0, got {count!r}.")
    if adapter.supports_novel and novel:
        _predict(adapter, make_query_batch(bb, dataset, classes=novel, needs=cls.needs))
    again = _predict(fitted(), query)
    if not torch.equal(logits, again):
        diff = (logits - again).abs().max().item()
        raise _fail(
            cls,
            f"two fits with seed {seed} gave different logits (max abs diff {diff:.3g}); draw "
            "random numbers from ctx.generator and keep no state between instances.",
        )


def _dataset_classes(dataset: str) -> tuple[str, ...]:
    from fewshot.datasets import get_dataset

    return get_dataset(dataset).spec().classnames
