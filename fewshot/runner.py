"""Run one few-shot experiment, or a sweep of them.

``run(spec)`` reads top to bottom: resolve the method and its config, load the backbone and
the dataset, sample (or load) the few-shot task, build the FitContext from cached features,
fit, then score every label space on the test split. ``sweep(specs)`` runs a grid, writing
one record per run; a run whose record exists with the same spec hash is skipped, and a run
that fails writes a failure record and the sweep goes on.

The adapter never sees the test split: the FitContext is built from the support and val
subsets only, and test features are passed to ``predict`` by this module.
"""

from __future__ import annotations

import contextlib
import random
import resource
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from fewshot.types import (
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
    from rich.console import Console

    from fewshot.backbones import Backbone
    from fewshot.datasets.base import Dataset
    from fewshot.features import FeatureCache
    from fewshot.methods.base import Adapter, FitContext

__all__ = ["ProgressFn", "run", "run_fit", "sweep"]

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
    """Fit once for specs that share one fit (:attr:`RunSpec.fit_spec`) and score each.

    Cross-dataset and domain-generalization runs evaluate one fitted adapter on the source
    and on every target; each gets its own result. With several specs, a target that fails
    to evaluate gets a failure result and the others go on; a failing fit raises.
    """
    from fewshot.backbones import load_backbone
    from fewshot.datasets import get_dataset
    from fewshot.features import FeatureCache
    from fewshot.methods import METHODS
    from fewshot.protocols import task_for

    if not specs or any(s.fit_spec != specs[0].fit_spec for s in specs):
        raise ValueError("run_fit needs one or more specs that share a fit (differing only in target).")
    spec = specs[0].fit_spec
    cache = cache if cache is not None else FeatureCache()
    start, encoded_before = time.perf_counter(), cache.images_encoded
    device = torch.device(spec.device)
    _reset_peak_memory(device)

    method_cls = METHODS.get(spec.method)
    config = method_cls.config_cls.build(
        spec.protocol, spec.shots, dict(spec.overrides), dataset=spec.dataset
    )
    backbone = load_backbone(spec.backbone, device)
    dataset = get_dataset(spec.dataset, data_root)
    dataset.check_trainable()
    dspec, splits = dataset.spec(), dataset.splits()
    task = task_for(dspec, splits, spec.protocol, spec.shots, spec.seed, cache.root)

    _seed_everything(spec.seed)
    ctx = _fit_context(spec, task, dataset, splits, backbone, cache, progress)
    adapter = method_cls(config)
    fit_start = time.perf_counter()
    with _autocast(device)():
        adapter.fit(ctx)
    fit_end = time.perf_counter()
    fit_extra = _extra_costs(adapter)
    fit_costs = {
        "fit_time_s": round(fit_end - fit_start, 3),
        "trainable_params": float(adapter.trainable_parameters()),
        # Images that passed through the encoder while fitting: cache misses, plus every
        # image an IMAGES method (or online augmentation) drew from the loaders.
        "fit_images_encoded": float(
            cache.images_encoded - encoded_before + _served(ctx.train_images) + _served(ctx.val_images)
        ),
    }
    provenance = _provenance(spec, task, dspec.version, dspec.split_source, backbone)
    provenance["method_version"] = method_cls.version

    results: list[RunResult] = []
    for record_spec in specs:
        eval_start, eval_encoded = time.perf_counter(), cache.images_encoded
        extra_before = _extra_costs(adapter)
        try:
            if record_spec.target:
                trained = {dspec.classnames[label] for label in task.train_space.labels}
                metrics, extra = _score_target(
                    adapter, backbone, record_spec.target, trained, data_root, cache
                )
            else:
                metrics, extra = _score_source(adapter, backbone, dataset, splits, task, cache), {}
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:
            if len(specs) == 1:
                raise
            results.append(_failure(record_spec, exc))
            continue
        # Costs of this record: the shared setup and fit, plus its own evaluation.
        eval_time = time.perf_counter() - eval_start
        costs = {
            "wall_time_s": round(fit_end - start + eval_time, 3),
            **fit_costs,
            "eval_time_s": round(eval_time, 3),
            "peak_memory_mb": _peak_memory_mb(device),
            "images_encoded": fit_costs["fit_images_encoded"] + cache.images_encoded - eval_encoded,
        }
        for key, value in _extra_costs(adapter).items():  # the fit's share plus this evaluation's
            costs[key] = fit_extra.get(key, 0.0) + value - extra_before.get(key, 0.0)
        results.append(
            RunResult(record_spec, "ok", metrics, costs, adapter.config.to_dict(), {**provenance, **extra})
        )
    return results


def _score_source(
    adapter: Adapter,
    backbone: Backbone,
    dataset: Dataset,
    splits: Splits,
    task: FewShotTask,
    cache: FeatureCache,
) -> dict[str, float | None]:
    """Accuracy on every evaluated label space of the source's test split."""
    metrics: dict[str, float | None] = {}
    for space in task.eval_spaces:
        if not adapter.supports_novel and not set(space.labels) <= set(task.train_space.labels):
            metrics[space.name] = None  # not applicable: classes the method never saw
            continue
        metrics[space.name] = _evaluate(adapter, backbone, dataset, splits.test, space, cache)
    return metrics


def _score_target(
    adapter: Adapter,
    backbone: Backbone,
    target: str,
    trained: set[str],
    data_root: Path | None,
    cache: FeatureCache,
) -> tuple[dict[str, float | None], dict[str, Any]]:
    """Accuracy on a target's whole test split, over the target's own class names.

    A closed-set method (``supports_novel`` false) is scored only where the target's classes
    are among the ``trained`` class names (a shifted domain such as ImageNet-A's 200 ImageNet
    classes); elsewhere the metric is not applicable. Returns the metrics (keyed by the
    target's name) and the target's provenance.
    """
    from fewshot.datasets import get_dataset

    dataset = get_dataset(target, data_root)
    tspec, splits = dataset.spec(), dataset.splits()
    provenance = {
        "target_split_hash": splits.hash,
        "target_dataset_version": tspec.version,
        "target_split_source": tspec.split_source,
    }
    if not adapter.supports_novel and not set(tspec.classnames) <= trained:
        return {target: None}, provenance  # a closed-set classifier cannot take new class names
    space = LabelSpace(target, target, tuple(range(tspec.num_classes)))
    return {target: _evaluate(adapter, backbone, dataset, splits.test, space, cache)}, provenance


def _served(images: object) -> int:
    """Images a loader has handed out (SubsetImages counts them)."""
    return int(getattr(images, "served", 0))


def _extra_costs(adapter: Adapter) -> dict[str, float]:
    return {key: float(value) for key, value in adapter.extra_costs().items()}


def _failure(spec: RunSpec, exc: BaseException) -> RunResult:
    """A failure record with the reason and the end of the traceback."""
    from fewshot.results import collect_provenance

    reason = f"{type(exc).__name__}: {exc}"
    detail = "".join(traceback.format_exception(exc)[-6:])
    return RunResult(spec, "failed", error=reason, provenance=collect_provenance(traceback=detail))


# ------------------------------------------------------------------------------------------
# The pieces of run()


def _seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch, as Dassl's set_random_seed does."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _fit_context(
    spec: RunSpec,
    task: FewShotTask,
    dataset: Dataset,
    splits: Splits,
    backbone: Backbone,
    cache: FeatureCache,
    progress: ProgressFn | None,
) -> FitContext:
    """The support and val subsets as features and images; no test data."""
    from fewshot.features import SubsetImages, encode_items, encode_views
    from fewshot.methods.base import FitContext

    dspec = dataset.spec()
    relabel = task.train_space.relabel()
    train_items = [splits.train.items[i] for i in task.train_ids]
    val_items = [splits.val.items[i] for i in task.val_ids]
    train_hash, val_hash = splits.train.hash, splits.val.hash
    train = encode_items(backbone, dataset, train_items, cache=cache, split_hash=train_hash)
    val = encode_items(backbone, dataset, val_items, cache=cache, split_hash=val_hash)
    views = None
    if spec.aug_views > 0:  # encoded on first use: methods that never read views cost nothing

        def compute_views() -> FeatureSet:
            encoded = encode_views(
                backbone, dataset, train_items, spec.aug_views, cache=cache, split_hash=train_hash
            )
            return _relabelled(encoded, relabel)

        views = LazyFeatureSet(compute_views)
    generator = torch.Generator().manual_seed(spec.seed)
    return FitContext(
        classnames=[dspec.classnames[label] for label in task.train_space.labels],
        template=dspec.template,
        templates=list(dspec.templates),
        backbone=backbone,
        train=_relabelled(train, relabel),
        train_views=views,
        val=_relabelled(val, relabel),
        train_images=SubsetImages(dataset, train_items, backbone, relabel),
        val_images=SubsetImages(dataset, val_items, backbone, relabel),
        shots=spec.shots,
        seed=spec.seed,
        generator=generator,
        device=backbone.device,
        dataset=spec.dataset,
        progress=progress,
        autocast=_autocast(backbone.device),
    )


def _relabelled(features: FeatureSet, relabel: dict[int, int]) -> FeatureSet:
    labels = torch.tensor([relabel[int(label)] for label in features.labels], dtype=torch.long)
    return replace(features, labels=labels)


def _evaluate(
    adapter: Adapter,
    backbone: Backbone,
    dataset: Dataset,
    test: Split,
    space: LabelSpace,
    cache: FeatureCache,
) -> float:
    """Top-1 accuracy (percent) of ``adapter`` on the test images of one label space."""
    from fewshot.features import SubsetImages, encode_items
    from fewshot.methods.base import Needs, QueryBatch
    from fewshot.metrics import accuracy

    dspec = dataset.spec()
    relabel = space.relabel()
    classnames = [dspec.classnames[label] for label in space.labels]
    items = [item for item in test.items if item.label in relabel]
    if not items:
        raise FewshotError(f"{dataset.name}: the test split has no images of label space {space.name!r}.")
    template, templates = dspec.template, list(dspec.templates)
    logits: list[torch.Tensor] = []
    if adapter.needs is Needs.FEATURES:
        # Features of the whole test split are cached once (fp32, like the support features);
        # a label space is a subset of them.
        feats = encode_items(backbone, dataset, test, cache=cache)
        index = [i for i, item in enumerate(test.items) if item.label in relabel]
        with torch.no_grad(), _autocast(backbone.device)():
            for chunk in torch.split(feats.features[index].to(backbone.device), EVAL_BATCH):
                query = QueryBatch(classnames, template, features=chunk, templates=templates)
                logits.append(adapter.predict(query).float().cpu())
    else:
        images = SubsetImages(dataset, items, backbone, relabel)
        with torch.no_grad(), _autocast(backbone.device)():
            for batch, _ in images.loader(256, augment=False, shuffle=False):
                pixels = batch.to(backbone.device)
                query = QueryBatch(classnames, template, images=pixels, templates=templates)
                logits.append(adapter.predict(query).float().cpu())
        cache.images_encoded += len(items)
    labels = torch.tensor([relabel[item.label] for item in items])
    return accuracy(torch.cat(logits), labels)


def _autocast(device: torch.device) -> Callable[[], contextlib.AbstractContextManager[Any]]:
    """Mixed precision on GPU (bf16 where supported), plain fp32 on CPU."""
    if device.type != "cuda":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return lambda: torch.autocast("cuda", dtype=dtype)


def _reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_memory_mb(device: torch.device) -> float:
    """Peak GPU memory of this run on CUDA; on CPU the process's peak resident size."""
    if device.type == "cuda":
        return round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return round(rss / (2**20 if sys.platform == "darwin" else 2**10), 1)


def _provenance(
    spec: RunSpec, task: FewShotTask, version: str, split_source: str, backbone: Backbone
) -> dict[str, Any]:
    from fewshot.results import collect_provenance, method_origin

    return collect_provenance(
        device=str(backbone.device),
        split_hash=task.split_hash,
        subset_hash=task.subset_hash,
        task_hash=task.hash,
        dataset_version=version,
        split_source=split_source,
        backbone_digest=backbone.weights_digest,
        method_origin=method_origin(spec.method),
    )


# ------------------------------------------------------------------------------------------
# Sweeps


def sweep(
    specs: Sequence[RunSpec],
    *,
    results_dir: Path,
    data_root: Path | None = None,
    cache: FeatureCache | None = None,
    console: Console | None = None,
) -> list[RunResult]:
    """Run every spec, writing one record each; skip runs already recorded.

    Everything that can be checked before the first run (methods, datasets present,
    backbones loadable, configs valid) is checked first, so bad input fails before anything
    is written. A run that raises writes a failure record and the sweep goes on.
    """
    from rich.console import Console

    from fewshot.features import FeatureCache
    from fewshot.results import find_record, write_record

    console = console or Console(stderr=True)
    cache = cache if cache is not None else FeatureCache()
    _preflight(specs, data_root)
    done: dict[RunSpec, RunResult] = {}
    fits: dict[RunSpec, list[RunSpec]] = {}  # one fit per source; its records, in sweep order
    for spec in specs:
        fits.setdefault(spec.fit_spec, []).append(spec)
    with _SweepProgress(console, len(fits)) as bar, _threads_for(specs):
        for fit_spec, members in fits.items():
            todo = []
            for spec in dict.fromkeys(members):
                previous = find_record(spec, results_dir)
                if previous is not None and previous.ok:
                    done[spec] = previous
                else:
                    todo.append(spec)
            head = f"{fit_spec.variant} {fit_spec.dataset} k{fit_spec.shots} s{fit_spec.seed}"
            if not todo:
                bar.advance(f"{head}: recorded, skipped")
                continue
            bar.start(head)
            lines = []
            for result in _run_or_fail(todo, data_root, cache, bar.epochs):
                write_record(result, result.spec.record_path(results_dir))
                done[result.spec] = result
                lines.append(_one_line(result))
            bar.advance("\n".join(lines))
    return [done[spec] for spec in specs]


@contextlib.contextmanager
def _threads_for(specs: Sequence[RunSpec]) -> Iterator[None]:
    """One CPU thread for sweeps of the toy backbone on CPU.

    Its matrices are tiny (width 128): a second thread saves nothing and, when other
    processes compete for the cores, synchronisation made CoOp runs ten times slower.
    """
    if not specs or any(s.backbone != "toy" or s.device != "cpu" for s in specs):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _run_or_fail(
    specs: list[RunSpec], data_root: Path | None, cache: FeatureCache, progress: ProgressFn
) -> list[RunResult]:
    try:
        return run_fit(specs, data_root=data_root, cache=cache, progress=progress)
    except (KeyboardInterrupt, SystemExit):
        raise  # an interrupted run leaves no record; rerunning the sweep resumes here
    except Exception as exc:
        return [_failure(spec, exc) for spec in specs]


def _preflight(specs: Sequence[RunSpec], data_root: Path | None) -> None:
    """Fail fast, before any record is written, on input that would fail every run."""
    from fewshot.backbones import load_backbone
    from fewshot.datasets import get_dataset
    from fewshot.methods import METHODS

    for name in sorted({s.dataset for s in specs}):
        get_dataset(name, data_root).check_trainable()
    problems: list[str] = []
    for name in sorted({s.dataset for s in specs} | {s.target for s in specs if s.target}):
        dataset = get_dataset(name, data_root)
        if not dataset.is_present():
            problems.append(f"{name}: missing — {dataset.fix_hint()}")
    if problems:
        unset = (
            "No data root is set: pass --data-root DIR or set $FEWSHOT_DATA (where the datasets are, "
            "or are to be downloaded).\n"
            if data_root is None
            else ""
        )
        raise FewshotError(unset + "Datasets missing:\n  " + "\n  ".join(problems))
    for spec in {(s.method, s.protocol, s.shots, s.overrides): s for s in specs}.values():
        METHODS.get(spec.method).config_cls.build(
            spec.protocol, spec.shots, dict(spec.overrides), dataset=spec.dataset
        )
    for backbone, device in sorted({(s.backbone, s.device) for s in specs}):
        load_backbone(backbone, device)


def _one_line(result: RunResult) -> str:
    spec = result.spec
    to = f" -> {spec.target}" if spec.target else ""
    head = f"{spec.variant} {spec.dataset}{to} k{spec.shots} s{spec.seed}"
    if not result.ok:
        return f"{head}: [red]failed[/red] ({result.error})"
    scores = ", ".join(f"{k} {v:.2f}" if v is not None else f"{k} n/a" for k, v in result.metrics.items())
    return f"{head}: {scores} ({result.costs.get('wall_time_s', 0):.1f}s)"


class _SweepProgress:
    """Rich progress: one bar for the sweep, one for the current run's epochs."""

    def __init__(self, console: Console, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.console = console
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.sweep_task = self.progress.add_task("runs", total=total)

    def __enter__(self) -> _SweepProgress:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def start(self, description: str) -> None:
        self.progress.update(self.sweep_task, description=f"runs · {description}")

    def advance(self, line: str) -> None:
        self.console.print(line)
        self.progress.advance(self.sweep_task)

    def epochs(self, n: int, description: str) -> Iterator[int]:
        task = self.progress.add_task(f"  {description}", total=n)
        try:
            for i in range(n):
                yield i
                self.progress.advance(task)
        finally:
            self.progress.remove_task(task)
