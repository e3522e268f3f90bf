"""Every registered method (plugins included) passes the Adapter contract on the toy world."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from fewshot.methods import METHODS, get_method, list_methods
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.testing import check_adapter
from fewshot.types import AdapterConfig

# Fast settings per method, on top of fewshot.testing.FAST_SETTINGS (epochs=2 where it exists).
FAST: dict[str, dict[str, object]] = {"coop": {"epochs": 2, "n_ctx": 4}, "cocoop": {"epochs": 1}}


@pytest.mark.parametrize("name", list_methods())
def test_method_meets_the_adapter_contract(name):
    check_adapter(get_method(name), overrides=FAST.get(name))


# The checker must be able to fail: adapters that break one rule each.


@dataclasses.dataclass(frozen=True)
class _Config(AdapterConfig):
    epochs: int = 10


class _Good(Adapter):
    config_cls = _Config
    needs = Needs.FEATURES

    def fit(self, ctx: FitContext) -> None:
        self.noise = torch.randn(1, generator=ctx.generator)

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        assert batch.features is not None
        return batch.features[:, : len(batch.classnames)] + self.noise


class _WrongShape(_Good):
    def predict(self, batch: QueryBatch) -> torch.Tensor:
        return super().predict(batch)[:, :1]


class _NotNovel(_Good):
    def predict(self, batch: QueryBatch) -> torch.Tensor:
        assert batch.features is not None
        return batch.features[:, :3] + self.noise  # always the three training classes


class _Leaky(_Good):
    fits = 0  # state shared between instances: the second fit differs from the first

    def fit(self, ctx: FitContext) -> None:
        type(self).fits += 1
        self.noise = torch.full((1,), float(self.fits))


class _ConfigRewriter(_Good):  # a per-dataset rule applied in fit instead of the preset
    def fit(self, ctx: FitContext) -> None:
        super().fit(ctx)
        self.config = dataclasses.replace(self.config, epochs=50)


class _NaN(_Good):
    def predict(self, batch: QueryBatch) -> torch.Tensor:
        return super().predict(batch) * float("nan")


class _UndecoratedConfig(AdapterConfig):  # no @dataclass(frozen=True): epochs is no field
    epochs: int = 1


class _Undecorated(_Good):
    config_cls = _UndecoratedConfig


def test_check_adapter_accepts_a_well_behaved_adapter():
    check_adapter(_Good)


@pytest.mark.parametrize(
    ("adapter", "message"),
    [
        (_WrongShape, "shape"),
        (_NotNovel, "shape"),
        (_Leaky, "different logits"),
        (_NaN, "non-finite"),
        (_ConfigRewriter, "fit changed its config"),
        (_Undecorated, "frozen"),
    ],
)
def test_check_adapter_catches_breaches(adapter, message):
    with pytest.raises(AssertionError, match=message):
        check_adapter(adapter)


@pytest.mark.parametrize("name", [n for n in METHODS.names() if METHODS.origin(n).kind == "builtin"])
def test_registered_summary_matches_the_class(name: str) -> None:
    """`fewshot list methods` shows the summary without importing the method: keep it true."""
    cls = METHODS.get(name)
    assert METHODS.summary(name) == {"needs": cls.needs.value, "novel": "yes" if cls.supports_novel else "no"}


def test_code_digest_covers_the_method_modules_a_method_borrows_from() -> None:
    """A method's digest covers the sibling method modules it imports code from (LP++ uses
    CLAP's helpers, Tip-Adapter zero-shot's text classifier, SgVA-CLIP CoOp's prompt learner,
    ProAPO DCLIP's phrasing), so editing those marks its records stale; the contract and the
    registry are not part of any method's code."""
    from pathlib import Path

    from fewshot.codeid import _source_files

    def names(method: str) -> set[str]:
        return {Path(f).name for f in _source_files(get_method(method))}

    assert {"lp_plus_plus.py", "clap.py", "zeroshot.py"} <= names("lp++")
    assert {"tip_adapter_f.py", "tip_adapter.py", "zeroshot.py", "_tip_cache.py"} <= names("tip-adapter-f")
    assert {"sgva.py", "coop.py"} <= names("sgva-clip")
    assert {"proapo.py", "dclip.py"} <= names("proapo")
    coop = {Path(f).as_posix() for f in _source_files(get_method("coop"))}
    assert not [
        f for f in coop if f.endswith(("methods/base.py", "methods/__init__.py", "methods/zeroshot.py"))
    ]
