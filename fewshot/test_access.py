"""The one path by which test data reaches a method's fit, for released protocols only.

Some published methods tune hyper-parameters or pick epochs on the full val split or on the
test split (Tip-Adapter's released code does both). fewshot never does so by default: its
FitContext holds the support and few-shot val subsets only. A method that reproduces such
a protocol says so per config with :meth:`Adapter.reads_test`; for those configs alone the
runner calls :func:`with_selection_sets`, which adds to the FitContext

- ``full_val``: the whole val split of the training classes, relabelled; None for a dataset
  without a val split of its own (ImageNet, whose ``Splits.val`` is its train split);
- ``test_for_selection``: the test split of the training classes, relabelled;

and :func:`mark_provenance` sets ``selected_on_test`` in every record of the fit, which the
leaderboard marks ‡. Features are the cached raw test-transform features of the run.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from fewshot.backbones import Backbone
    from fewshot.datasets.base import Dataset
    from fewshot.features import FeatureCache
    from fewshot.methods.base import Adapter, FitContext
    from fewshot.types import AdapterConfig, FeatureSet, FewShotTask, Split, Splits

__all__ = ["mark_provenance", "reads_test", "with_selection_sets"]


def reads_test(method_cls: type[Adapter], config: AdapterConfig) -> bool:
    """Whether this method with this config is handed test data (``Adapter.reads_test``)."""
    reader = getattr(method_cls, "reads_test", None)
    return bool(reader(config)) if reader is not None else False


def with_selection_sets(
    ctx: FitContext,
    task: FewShotTask,
    dataset: Dataset,
    splits: Splits,
    backbone: Backbone,
    cache: FeatureCache,
    precision: str,
    num_workers: int,
) -> FitContext:
    """``ctx`` with ``full_val`` (unless the val split is the train split) and
    ``test_for_selection`` filled in, both restricted to the training classes."""
    relabel = task.train_space.relabel()

    def encoded(split: Split) -> FeatureSet:
        from fewshot.encoding import encode_items

        feats = encode_items(
            backbone, dataset, split, cache=cache, precision=precision, num_workers=num_workers
        )
        index = [i for i, label in enumerate(feats.labels.tolist()) if int(label) in relabel]
        kept = feats.subset(index)
        labels = torch.tensor([relabel[int(label)] for label in kept.labels], dtype=torch.long)
        return replace(kept, labels=labels)

    full_val = None if splits.val_is_train else encoded(splits.val)
    return replace(ctx, full_val=full_val, test_for_selection=encoded(splits.test))


def mark_provenance(provenance: dict[str, Any], method_cls: type[Adapter], config: AdapterConfig) -> None:
    """Set ``selected_on_test`` in a record's provenance when the fit was handed test data."""
    if reads_test(method_cls, config):
        provenance["selected_on_test"] = True
