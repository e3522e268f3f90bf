"""Does a method select only on its training and val data? A reusable check through the runner.

:func:`fit_with_shuffled_test_labels` fits a method twice on one toy task through
``fewshot.runner`` (prepare + fit, as ``fewshot run`` does): once as it is, once with the
labels of the dataset's test split shuffled. A method that never reads test data chooses
the same hyper-parameters (``Adapter.selected()``) and gives the same test logits both
times; :func:`assert_selection_ignores_test` checks exactly that. Any adapter method can
reuse it with its own fast overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import torch

from fewshot.runner import Fitted, fit, prepare
from fewshot.types import RunSpec, Split


@contextmanager
def shuffled_test_labels(monkeypatch: pytest.MonkeyPatch, dataset: str, seed: int = 0) -> Iterator[None]:
    """While active, ``dataset``'s test split has its labels permuted (same images, same
    order; train and val untouched)."""
    from fewshot.datasets import get_dataset

    cls = type(get_dataset(dataset))
    original = cls.splits

    def shuffled(self: Any) -> Any:
        splits = original(self)
        items = splits.test.items
        order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
        relabelled = tuple(
            dataclasses.replace(item, label=items[j].label) for item, j in zip(items, order, strict=True)
        )
        assert any(a.label != b.label for a, b in zip(items, relabelled, strict=True))
        return dataclasses.replace(splits, test=Split(splits.test.name, relabelled))

    with monkeypatch.context() as patch:
        patch.setattr(cls, "splits", shuffled)
        yield


def _fitted(spec: RunSpec, cache: Any) -> Fitted:
    return fit(prepare(spec, data_root=None, cache=cache))


def _test_logits(fitted: Fitted, features: torch.Tensor) -> torch.Tensor:
    from fewshot.methods.base import QueryBatch

    p = fitted.prepared
    query = QueryBatch(classnames=p.ctx.classnames, template=p.ctx.template, features=features)
    with torch.no_grad():
        return fitted.adapter.predict(query).float()


def fit_with_shuffled_test_labels(
    monkeypatch: pytest.MonkeyPatch,
    cache: Any,
    method: str,
    overrides: tuple[tuple[str, str], ...] = (),
    *,
    dataset: str = "toy-colors",
    shots: int = 4,
    seed: int = 1,
) -> tuple[Fitted, Fitted, torch.Tensor, torch.Tensor]:
    """Both fits and their logits on the (unshuffled) test features of the training classes."""
    from fewshot.encoding import encode_items

    spec = RunSpec(method, dataset, shots=shots, seed=seed, overrides=overrides)
    plain = _fitted(spec, cache)
    p = plain.prepared
    test = encode_items(p.backbone, p.dataset, p.splits.test, cache=cache)
    trained = set(p.task.train_space.labels)
    features = test.features[[i for i, label in enumerate(test.labels.tolist()) if label in trained]]
    with shuffled_test_labels(monkeypatch, dataset):
        shuffled = _fitted(spec, cache)
    assert shuffled.prepared.splits.test.hash != p.splits.test.hash  # the patch took effect
    return plain, shuffled, _test_logits(plain, features), _test_logits(shuffled, features)


def assert_selection_ignores_test(
    monkeypatch: pytest.MonkeyPatch,
    cache: Any,
    method: str,
    overrides: tuple[tuple[str, str], ...] = (),
    **task: Any,
) -> dict[str, Any]:
    """Same selected hyper-parameters and same test logits with the test labels shuffled;
    returns the selection (for further checks)."""
    plain, shuffled, logits, again = fit_with_shuffled_test_labels(
        monkeypatch, cache, method, overrides, **task
    )
    assert plain.prepared.ctx.test_for_selection is None and plain.prepared.ctx.full_val is None
    assert plain.adapter.selected() == shuffled.adapter.selected()
    assert plain.provenance["selected"] == plain.adapter.selected()
    assert "selected_on_test" not in plain.provenance
    assert torch.equal(logits, again)
    return plain.adapter.selected()
