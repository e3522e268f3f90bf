"""Run one few-shot experiment, or a sweep of them.

A run reads top to bottom in :func:`run_fit`, one step per function:

1. :func:`prepare`: the resolved config (:func:`fewshot.planning.resolve_config`), the
   backbone, the dataset and its few-shot task, the seeds, and the FitContext built from the
   support and val subsets (cached features, augmented views on first use, image sources);
2. :func:`fit`: the adapter fitted under the run's precision, with the costs of fitting;
3. :func:`score`: accuracy on every label space of the source's test split, or on a
   target's test split (cross-dataset, domain generalisation);
4. :func:`make_record`: the :class:`~fewshot.types.RunResult` with metrics, costs, config
   and provenance.

Sweeps of many runs, with records on disk, are :mod:`fewshot.sweeps`.

The adapter never sees the test split: the FitContext is built from the support and val
subsets only, and test features are passed to ``predict`` by this module. The one exception
is a method config that reproduces a released protocol selecting on test
(``Adapter.reads_test``): :mod:`fewshot.test_access` adds the full val and test splits, and
its records carry ``selected_on_test``.
"""

from __future__ import annotations

import os
import random
import resource
import sys
import time
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fewshot.codeid import code_digest
from fewshot.descriptions.wiring import knowledge_record, load_knowledge
from fewshot.precision import AutocastFactory, autocast_for
from fewshot.stages import StageCache
from fewshot.types import (
    AdapterConfig,
    FeatureSet,
    FewshotError,
    FewShotTask,
    LabelSpace,
    LazyFeatureSet,
    RunResult,
    RunSpec,
    Split,
    Splits,
)

if TYPE_CHECKING:
    from fewshot.backbones import Backbone
    from fewshot.datasets.base import Dataset
    from fewshot.descriptions import DescriptionSet
    from fewshot.features import FeatureCache
    from fewshot.methods.base import Adapter, FitContext

__all__ = [
    "Fitted",
    "Prepared",
    "ProgressFn",
    "fit",
    "make_record",
    "prepare",
    "run",
    "run_fit",
    "score",
]

ProgressFn = Callable[[int, str], Iterator[int]]
EVAL_BATCH = 1024


def run(
    spec: RunSpec,
    *,
    data_root: Path | None = None,
    cache: FeatureCache | None = None,
    progress: ProgressFn | None = None,
) -> RunResult:
    """Fit ``spec.method`` on one few-shot task and score it on the test split.

    The test split is the source's own, or, with ``spec.target``, the target dataset's.
    """
    return run_fit([spec], data_root=data_root, cache=cache, progress=progress)[0]


def run_fit(
    specs: Sequence[RunSpec],
    *,
    data_root: Path | None = None,
    cache: FeatureCache | None = None,
    progress: ProgressFn | None = None,
) -> list[RunResult]:
    """Fit once for specs that share one fit (:attr:`RunSpec.fit_spec`) and record each.

    Cross-dataset and domain-generalization runs evaluate one fitted adapter on the source
    and on every target; each gets its own result. With several specs, a target that fails
    to evaluate gets a failure result and the others go on; a failing fit raises.
    """
    from fewshot.features import FeatureCache

    if not specs or any(s.fit_spec != specs[0].fit_spec for s in specs):
        raise ValueError("run_fit needs one or more specs that share a fit (differing only in target).")
    cache = cache if cache is not None else FeatureCache()
    fitted = fit(prepare(specs[0].fit_spec, data_root=data_root, cache=cache, progress=progress))
    results = []
    for spec in specs:
        try:
            results.append(_evaluate_and_record(fitted, spec))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if len(specs) == 1:
                raise
            results.append(failure(spec, exc))
    return results


# ------------------------------------------------------------------------------------------
# 1. Prepare


@dataclass
class Prepared:
    """Everything a fit needs, settled before the adapter is built."""

    spec: RunSpec
    config: AdapterConfig
    backbone: Backbone
    dataset: Dataset
    splits: Splits
    task: FewShotTask
    ctx: FitContext
    cache: FeatureCache
    data_root: Path | None
    autocast: AutocastFactory
    started: float  # perf_counter at the start of the run
    encoded_before: int  # the cache's image count at the start of the run
    knowledge: dict[str, DescriptionSet] = field(default_factory=dict)  # kind -> the source's set


def prepare(
    spec: RunSpec, *, data_root: Path | None, cache: FeatureCache, progress: ProgressFn | None = None
) -> Prepared:
    """Resolve the config, load the backbone and dataset, sample the task, build the context."""
    from fewshot.backbones import load_backbone
    from fewshot.datasets import get_dataset
    from fewshot.methods import METHODS
    from fewshot.planning import resolve_config
    from fewshot.protocols import task_for
    from fewshot.test_access import reads_test, with_selection_sets

    started, encoded_before = time.perf_counter(), cache.images_encoded
    config = resolve_config(spec)
    knowledge = load_knowledge(METHODS.get(spec.method), config, spec.dataset, data_root)
    device = torch.device(spec.device)
    _reset_peak_memory(device)
    backbone = load_backbone(spec.backbone, device)
    dataset = get_dataset(spec.dataset, data_root)
    dataset.check_trainable()
    splits = dataset.splits()
    _say_if_generated(dataset)
    task = task_for(dataset.spec(), splits, spec.protocol, spec.shots, spec.seed, cache.root)
    _seed_everything(spec.seed)
    autocast = autocast_for(spec.precision, backbone.device)
    ctx = _fit_context(spec, task, dataset, splits, backbone, cache, progress, autocast)
    ctx.descriptions, ctx.synonyms = knowledge.get("descriptions"), knowledge.get("synonyms")
    if reads_test(METHODS.get(spec.method), config):  # a released protocol that selects on test
        workers = loader_workers(backbone.device)
        ctx = with_selection_sets(ctx, task, dataset, splits, backbone, cache, spec.precision, workers)
    return Prepared(
        spec,
        config,
        backbone,
        dataset,
        splits,
        task,
        ctx,
        cache,
        data_root,
        autocast,
        started,
        encoded_before,
        knowledge,
    )


def _say_if_generated(dataset: Dataset) -> None:
    """A run on a split fewshot generated (no official split file) says so as it starts."""
    if dataset.spec().split_source == "generated":
        warnings.warn(
            f"{dataset.name} has no official split file here: this run uses a split fewshot "
            "generated, and its results are marked † (not comparable with published numbers). "
            f"Put CoOp's split file in {dataset.path} to use the official split.",
            stacklevel=3,
        )


def _fit_context(
    spec: RunSpec,
    task: FewShotTask,
    dataset: Dataset,
    splits: Splits,
    backbone: Backbone,
    cache: FeatureCache,
    progress: ProgressFn | None,
    autocast: AutocastFactory,
) -> FitContext:
    """The support and val subsets as features and images; no test data."""
    from fewshot.encoding import SubsetImages, encode_items
    from fewshot.methods.base import FitContext

    dspec = dataset.spec()
    relabel = task.train_space.relabel()
    train_items = [splits.train.items[i] for i in task.train_ids]
    val_items = [splits.val.items[i] for i in task.val_ids]
    workers = loader_workers(backbone.device)
    train, val = (
        encode_items(
            backbone,
            dataset,
            items,
            cache=cache,
            precision=spec.precision,
            split_hash=split.hash,
            num_workers=workers,
        )
        for items, split in ((train_items, splits.train), (val_items, splits.val))
    )
    return FitContext(
        classnames=[dspec.classnames[label] for label in task.train_space.labels],
        template=dspec.template,
        templates=list(dspec.templates),
        backbone=backbone,
        train=_relabelled(train, relabel),
        train_views=_lazy_views(spec, dataset, train_items, splits.train.hash, backbone, cache, relabel),
        val=_relabelled(val, relabel),
        train_images=SubsetImages(dataset, train_items, backbone, relabel, num_workers=workers),
        val_images=SubsetImages(dataset, val_items, backbone, relabel, num_workers=workers),
        shots=spec.shots,
        seed=spec.seed,
        generator=torch.Generator().manual_seed(spec.seed),
        device=backbone.device,
        dataset=spec.dataset,
        progress=progress,
        autocast=autocast,
        stages=StageCache(cache.root),
    )


def _lazy_views(
    spec: RunSpec,
    dataset: Dataset,
    items: list[Any],
    split_hash: str,
    backbone: Backbone,
    cache: FeatureCache,
    relabel: dict[int, int],
) -> FeatureSet | None:
    """The run seed's augmented views of the support set, encoded on first use (methods that
    never read them cost nothing); None with online augmentation."""
    from fewshot.encoding import encode_views

    if spec.aug_views == 0:
        return None

    def compute() -> FeatureSet:
        views = encode_views(
            backbone,
            dataset,
            items,
            spec.aug_views,
            cache=cache,
            seed=spec.seed,
            precision=spec.precision,
            split_hash=split_hash,
            num_workers=loader_workers(backbone.device),
        )
        return _relabelled(views, relabel)

    return LazyFeatureSet(compute)


def loader_workers(device: torch.device) -> int:
    """DataLoader workers that decode and transform images: none on a CPU, where the encoder
    is the bottleneck and workers only compete for its cores; on an accelerator up to 8 (the
    usable cores), so JPEG decoding keeps up with the encoder (docs/performance.md)."""
    if torch.device(device).type == "cpu":
        return 0
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return min(8, cores)


def _relabelled(features: FeatureSet, relabel: dict[int, int]) -> FeatureSet:
    labels = torch.tensor([relabel[int(label)] for label in features.labels], dtype=torch.long)
    return replace(features, labels=labels)


def _seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, as Dassl's set_random_seed does."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ------------------------------------------------------------------------------------------
# 2. Fit


@dataclass
class Fitted:
    """A fitted adapter and what fitting it cost."""

    prepared: Prepared
    adapter: Adapter
    fit_end: float
    costs: dict[str, float]  # fit time, trainable parameters, images encoded while fitting
    extra: dict[str, float]  # the adapter's own costs after fitting (Adapter.extra_costs)
    provenance: dict[str, Any]


def fit(prepared: Prepared) -> Fitted:
    """Build the adapter with the resolved config and fit it under the run's precision."""
    from fewshot.methods import METHODS
    from fewshot.test_access import mark_provenance

    spec, ctx, cache = prepared.spec, prepared.ctx, prepared.cache
    method_cls = METHODS.get(spec.method)
    adapter = method_cls(prepared.config)
    fit_start = time.perf_counter()
    with prepared.autocast():
        adapter.fit(ctx)
    fit_end = time.perf_counter()
    costs = {
        "fit_time_s": round(fit_end - fit_start, 3),
        "trainable_params": float(adapter.trainable_parameters()),
        # Images that passed through the encoder while fitting: cache misses, plus every
        # image an IMAGES method (or online augmentation) drew from the loaders.
        "fit_images_encoded": float(
            cache.images_encoded
            - prepared.encoded_before
            + _served(ctx.train_images)
            + _served(ctx.val_images)
        ),
    }
    provenance = _provenance(prepared)
    provenance["method_version"] = method_cls.version
    provenance["code_digest"] = code_digest(method_cls)
    if prepared.knowledge:
        provenance["knowledge"] = knowledge_record(prepared.knowledge)
    provenance["selected"] = adapter.selected()  # hyper-parameters chosen while fitting
    if made := adapter.fit_provenance():
        provenance["fit"] = made
    mark_provenance(provenance, method_cls, prepared.config)
    return Fitted(prepared, adapter, fit_end, costs, _extra_costs(adapter), provenance)


def _provenance(prepared: Prepared) -> dict[str, Any]:
    from fewshot.results import collect_provenance, method_origin

    spec, task, dspec = prepared.spec, prepared.task, prepared.dataset.spec()
    return collect_provenance(
        device=str(prepared.backbone.device),
        precision=spec.precision,
        split_hash=task.split_hash,
        subset_hash=task.subset_hash,
        task_hash=task.hash,
        dataset_version=dspec.version,
        split_source=dspec.split_source,
        backbone_digest=prepared.backbone.weights_digest,
        method_origin=method_origin(spec.method),
    )


# ------------------------------------------------------------------------------------------
# 3. Score


def score(fitted: Fitted, spec: RunSpec) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Accuracy of the fitted adapter for one record: every label space of the source's
    test split, or (``spec.target``) the target's whole test split. Returns the metrics
    and the record's extra provenance (the target's split)."""
    p = fitted.prepared
    if not spec.target:
        return _score_source(fitted), {}
    trained = {p.dataset.spec().classnames[label] for label in p.task.train_space.labels}
    return _score_target(fitted, spec.target, trained)


def _score_source(fitted: Fitted) -> dict[str, float | None]:
    """Accuracy on every evaluated label space of the source's test split."""
    p, adapter = fitted.prepared, fitted.adapter
    metrics: dict[str, float | None] = {}
    for space in p.task.eval_spaces:
        if not adapter.supports_novel and not set(space.labels) <= set(p.task.train_space.labels):
            metrics[space.name] = None  # not applicable: classes the method never saw
            continue
        metrics[space.name] = _accuracy(fitted, p.dataset, p.splits.test, space)
    return metrics


def _score_target(
    fitted: Fitted, target: str, trained: set[str]
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Accuracy on a target's whole test split, over the target's own class names.

    A closed-set method (``supports_novel`` false) is scored only where the target's classes
    are among the ``trained`` class names (a shifted domain such as ImageNet-A's 200 ImageNet
    classes); elsewhere the metric is not applicable.
    """
    from fewshot.datasets import get_dataset

    dataset = get_dataset(target, fitted.prepared.data_root)
    tspec, splits = dataset.spec(), dataset.splits()
    provenance: dict[str, Any] = {
        "target_split_hash": splits.hash,
        "target_dataset_version": tspec.version,
        "target_split_source": tspec.split_source,
    }
    if fitted.prepared.knowledge:
        provenance["target_knowledge"] = knowledge_record(_knowledge(fitted, dataset))
    if not fitted.adapter.supports_novel and not set(tspec.classnames) <= trained:
        return {target: None}, provenance  # a closed-set classifier cannot take new class names
    space = LabelSpace(target, target, tuple(range(tspec.num_classes)))
    return {target: _accuracy(fitted, dataset, splits.test, space)}, provenance


def _accuracy(fitted: Fitted, dataset: Dataset, test: Split, space: LabelSpace) -> float:
    """Top-1 accuracy (percent) of the fitted adapter on the test images of one label space."""
    from fewshot.methods.base import Needs
    from fewshot.metrics import accuracy

    relabel = space.relabel()
    items = [item for item in test.items if item.label in relabel]
    if not items:
        raise FewshotError(f"{dataset.name}: the test split has no images of label space {space.name!r}.")
    if fitted.adapter.needs is Needs.FEATURES:
        logits = _logits_from_features(fitted, dataset, test, space)
    else:
        logits = _logits_from_images(fitted, dataset, items, space)
    labels = torch.tensor([relabel[item.label] for item in items])
    return accuracy(logits, labels)


def _query(fitted: Fitted, dataset: Dataset, space: LabelSpace) -> dict[str, Any]:
    """QueryBatch fields of a label space: class names, templates, the dataset's sets."""
    dspec = dataset.spec()
    classnames = [dspec.classnames[label] for label in space.labels]
    sets = _knowledge(fitted, dataset)
    return {
        "classnames": classnames,
        "template": dspec.template,
        "templates": list(dspec.templates),
        "descriptions": sets.get("descriptions"),
        "synonyms": sets.get("synonyms"),
    }


def _knowledge(fitted: Fitted, dataset: Dataset) -> dict[str, DescriptionSet]:
    """The sets of the query dataset: the source's, or a target's own."""
    p = fitted.prepared
    if not p.knowledge or dataset.name == p.spec.dataset:
        return p.knowledge
    return load_knowledge(type(fitted.adapter), p.config, dataset.name, p.data_root)


def _logits_from_features(fitted: Fitted, dataset: Dataset, test: Split, space: LabelSpace) -> torch.Tensor:
    """Logits over the cached test features (the whole split is encoded once, at the run's
    precision, and every label space is a subset of it)."""
    from fewshot.encoding import encode_items
    from fewshot.methods.base import QueryBatch

    p = fitted.prepared
    workers = loader_workers(p.backbone.device)
    feats = encode_items(
        p.backbone, dataset, test, cache=p.cache, precision=p.spec.precision, num_workers=workers
    )
    index = [i for i, item in enumerate(test.items) if item.label in set(space.labels)]
    query, logits = _query(fitted, dataset, space), []
    with torch.no_grad(), p.autocast():
        for chunk in torch.split(feats.features[index].to(p.backbone.device), EVAL_BATCH):
            logits.append(fitted.adapter.predict(QueryBatch(features=chunk, **query)).float().cpu())
    return torch.cat(logits)


def _logits_from_images(
    fitted: Fitted, dataset: Dataset, items: list[Any], space: LabelSpace
) -> torch.Tensor:
    """Logits of methods whose query images pass through a (prompted) image encoder."""
    from fewshot.encoding import SubsetImages
    from fewshot.methods.base import QueryBatch

    p = fitted.prepared
    images = SubsetImages(
        dataset, items, p.backbone, space.relabel(), num_workers=loader_workers(p.backbone.device)
    )
    query, logits = _query(fitted, dataset, space), []
    with torch.no_grad(), p.autocast():
        for batch, _ in images.loader(256, augment=False, shuffle=False):
            pixels = batch.to(p.backbone.device)
            logits.append(fitted.adapter.predict(QueryBatch(images=pixels, **query)).float().cpu())
    p.cache.images_encoded += len(items)
    return torch.cat(logits)


# ------------------------------------------------------------------------------------------
# 4. Record


def _evaluate_and_record(fitted: Fitted, spec: RunSpec) -> RunResult:
    """Score one record of the fit and build its result, with this evaluation's costs."""
    eval_start, encoded = time.perf_counter(), fitted.prepared.cache.images_encoded
    extra_before = _extra_costs(fitted.adapter)
    metrics, target_provenance = score(fitted, spec)
    eval_costs = {
        "eval_time_s": time.perf_counter() - eval_start,
        "eval_images_encoded": float(fitted.prepared.cache.images_encoded - encoded),
    }
    extra = {
        key: fitted.extra.get(key, 0.0) + value - extra_before.get(key, 0.0)
        for key, value in _extra_costs(fitted.adapter).items()
    }  # the fit's share plus this evaluation's
    return make_record(fitted, spec, metrics, {**eval_costs, **extra}, target_provenance)


def make_record(
    fitted: Fitted,
    spec: RunSpec,
    metrics: dict[str, float | None],
    eval_costs: dict[str, float],
    extra_provenance: dict[str, Any],
) -> RunResult:
    """The record of one evaluated spec: the shared setup and fit plus its own evaluation."""
    p = fitted.prepared
    eval_costs = dict(eval_costs)
    eval_time = eval_costs.pop("eval_time_s")
    eval_images = eval_costs.pop("eval_images_encoded")
    costs = {
        "wall_time_s": round(fitted.fit_end - p.started + eval_time, 3),
        **fitted.costs,
        "eval_time_s": round(eval_time, 3),
        "peak_memory_mb": _peak_memory_mb(p.backbone.device),
        "images_encoded": fitted.costs["fit_images_encoded"] + eval_images,
        **eval_costs,
    }
    config = fitted.adapter.config.to_dict()
    return RunResult(spec, "ok", metrics, costs, config, {**fitted.provenance, **extra_provenance})


def _served(images: object) -> int:
    """Images a loader has handed out (SubsetImages counts them)."""
    return int(getattr(images, "served", 0))


def _extra_costs(adapter: Adapter) -> dict[str, float]:
    return {key: float(value) for key, value in adapter.extra_costs().items()}


def failure(spec: RunSpec, exc: BaseException) -> RunResult:
    """A failure record with the reason and the end of the traceback."""
    from fewshot.results import collect_provenance

    reason = f"{type(exc).__name__}: {exc}"
    detail = "".join(traceback.format_exception(exc)[-6:])
    return RunResult(spec, "failed", error=reason, provenance=collect_provenance(traceback=detail))


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory of this run on CUDA; on CPU the process's peak resident size."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)
