"""Tip-Adapter and Tip-Adapter-F: the closed-form logits, the (β, α) search against the
official double loop, Tip-F at 0 epochs, selection on val only, the original protocol's
test access, presets, and learning on the toy world.

Expected values are computed here from the official formulas (gaopengcuhk/Tip-Adapter@d0e2d6f8
utils.py ``build_cache_model``, ``clip_classifier``, ``search_hp``; main.py), not by the code
under test.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fewshot.methods import _tip_cache
from fewshot.methods.tip_adapter import TipAdapter, TipAdapterConfig
from fewshot.methods.tip_adapter_f import TipAdapterF, TipAdapterFConfig
from fewshot.testing import make_fit_context
from fewshot.types import ConfigError, FeatureSet, FewshotError, RunSpec

from ._selection import fit_with_shuffled_test_labels

CLASSES, SHOTS, VIEWS = (0, 1, 2, 3), 4, 3
TIP_IMAGENET = (  # Tip-Adapter datasets/imagenet.py imagenet_templates, as written there
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)


@pytest.fixture(scope="module")
def backbone():
    from fewshot.backbones import load_backbone

    return load_backbone("toy")


@pytest.fixture(scope="module")
def colors(backbone):
    """toy-colors, 4 classes, 4 shots, 3 cached views."""
    return make_fit_context(backbone, "toy-colors", classes=CLASSES, shots=SHOTS, aug_views=VIEWS)


def random_context(ctx, seed: int = 0):
    """``ctx`` with random support views and val features (the text side stays the toy CLIP's)."""
    g = torch.Generator().manual_seed(seed)
    n, dim = len(ctx.train), ctx.train.features.shape[1]
    labels = ctx.train.labels
    views = FeatureSet(torch.randn(VIEWS * n, dim, generator=g), labels.repeat(VIEWS), ctx.train.ids * VIEWS)
    val = FeatureSet(torch.randn(40, dim, generator=g), torch.arange(40) % len(CLASSES), ("v",) * 40)
    return dataclasses.replace(ctx, train_views=views, val=val, generator=torch.Generator().manual_seed(1))


def fit(cls, config, ctx):
    adapter = cls(config)
    adapter.fit(dataclasses.replace(ctx, generator=torch.Generator().manual_seed(ctx.seed)))
    return adapter


def text_weights(backbone, template: str, names: list[str]) -> torch.Tensor:
    with torch.no_grad():
        feats = backbone.model.encode_text(backbone.tokenize([template.format(n) for n in names]))
    return F.normalize(feats.float(), dim=-1)


def expected_logits(query, views, n, labels, weights, beta, alpha) -> torch.Tensor:
    """The paper's logits, written image by image: keys = normalised mean of each image's views."""
    keys = torch.stack([sum(views[v * n + i] for v in range(VIEWS)) / VIEWS for i in range(n)])
    keys = keys / keys.norm(dim=-1, keepdim=True)
    f = query / query.norm(dim=-1, keepdim=True)
    out = 100.0 * f @ weights.t()
    for k in range(n):
        out[:, int(labels[k])] += alpha * torch.exp(-beta * (1.0 - f @ keys[k]))
    return out


def test_logits_equal_the_closed_formula(backbone, colors):
    ctx = random_context(colors)
    adapter = fit(TipAdapter, TipAdapterConfig(init_beta=2.5, init_alpha=1.7, search=False), ctx)
    assert (adapter.beta, adapter.alpha) == (2.5, 1.7) and adapter.selected() == {}
    query = torch.randn(7, ctx.train.features.shape[1], generator=torch.Generator().manual_seed(5))
    weights = text_weights(backbone, ctx.template, ctx.classnames)
    n = len(ctx.train)
    want = expected_logits(query, ctx.train_views.features, n, ctx.train.labels, weights, 2.5, 1.7)
    batch = dataclasses.replace(_query(ctx), features=query)
    assert torch.allclose(adapter.predict(batch), want, atol=1e-4)
    # A subset of the classes, reordered: the matching columns.
    names = [ctx.classnames[2], ctx.classnames[0]]
    sub = adapter.predict(dataclasses.replace(batch, classnames=names))
    assert torch.allclose(sub, want[:, [2, 0]], atol=1e-4)
    with pytest.raises(FewshotError, match="cannot classify"):
        adapter.predict(dataclasses.replace(batch, classnames=["never seen"]))


def _query(ctx):
    from fewshot.methods.base import QueryBatch

    return QueryBatch(classnames=list(ctx.classnames), template=ctx.template)


def naive_search(features, labels, weights, keys, values, scale, steps):
    """utils.py ``search_hp``: β outer, α inner, strict > from a best accuracy of 0."""
    betas = [i * (scale[0] - 0.1) / steps[0] + 0.1 for i in range(steps[0])]
    alphas = [i * (scale[1] - 0.1) / steps[1] + 0.1 for i in range(steps[1])]
    best_acc, best = 0.0, (0.0, 0.0)
    for beta in betas:
        for alpha in alphas:
            affinity = features @ keys.t()
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ values
            tip = 100.0 * features @ weights.t() + cache_logits * alpha
            acc = 100.0 * float((tip.argmax(dim=1) == labels).float().sum()) / len(labels)
            if acc > best_acc:
                best_acc, best = acc, (beta, alpha)
    return best, best_acc


@pytest.mark.parametrize("chunk", [_tip_cache.CHUNK_ELEMENTS, 50])
def test_grid_search_equals_the_official_double_loop(monkeypatch, chunk):
    monkeypatch.setattr(_tip_cache, "CHUNK_ELEMENTS", chunk)  # 50: many β and row chunks
    g = torch.Generator().manual_seed(3)
    for trial in range(4):
        feats = F.normalize(torch.randn(30, 16, generator=g), dim=-1)
        labels = torch.randint(0, 5, (30,), generator=g)
        weights = F.normalize(torch.randn(5, 16, generator=g), dim=-1) * 0.05  # weak zero-shot
        keys = F.normalize(feats[:20] + 0.5 * torch.randn(20, 16, generator=g), dim=-1)
        values = F.one_hot(labels[:20], 5).float()
        scale, steps = (5.0 + trial, 4.0), (13, 7)
        (beta, alpha), acc = naive_search(feats, labels, weights, keys, values, scale, steps)
        got = _tip_cache.search_grid(feats, labels, weights, keys, values, scale, steps)
        assert (got.beta, got.alpha) == pytest.approx((beta, alpha), abs=1e-12)
        assert got.accuracy == pytest.approx(acc)


def test_adapter_search_matches_the_loop_on_its_val_set(backbone, colors):
    ctx = random_context(colors, seed=2)
    config = TipAdapterConfig(search_scale=(9.0, 6.0), search_step=(11, 5))
    adapter = fit(TipAdapter, config, ctx)
    f = F.normalize(ctx.val.features, dim=-1)
    weights = text_weights(backbone, ctx.template, ctx.classnames)
    (beta, alpha), _ = naive_search(
        f, ctx.val.labels, weights, adapter.keys, adapter.values, (9.0, 6.0), (11, 5)
    )
    assert adapter.selected() == pytest.approx({"beta": beta, "alpha": alpha})


def test_tip_f_with_zero_epochs_is_tip_adapter(colors):
    settings = {"search_scale": (12.0, 10.0), "search_step": (40, 10)}
    tip = fit(TipAdapter, TipAdapterConfig(**settings), colors)
    tip_f = fit(TipAdapterF, TipAdapterFConfig(epochs=0, **settings), colors)
    assert tip.selected() == tip_f.selected()
    batch = dataclasses.replace(_query(colors), features=colors.val.features)
    assert torch.equal(tip.predict(batch), tip_f.predict(batch))
    trained = fit(TipAdapterF, TipAdapterFConfig(epochs=3, **settings), colors)
    assert not torch.equal(trained.keys, tip.keys)  # training moves the keys
    assert trained.trainable_parameters() == tip.keys.numel() and tip.trainable_parameters() == 0


def test_online_keys_average_fresh_augmented_passes(backbone, colors):
    online = dataclasses.replace(colors, train_views=None)
    adapter = fit(TipAdapter, TipAdapterConfig(augment_epoch=2, search=False), online)
    passes = []
    generator = torch.Generator().manual_seed(colors.seed)
    for _ in range(2):  # the same draws, encoded here
        images, _ = next(
            iter(colors.train_images.loader(256, augment=True, shuffle=False, generator=generator))
        )
        passes.append(backbone.encode_images(images).float())
    assert torch.allclose(adapter.keys, F.normalize((passes[0] + passes[1]) / 2, dim=-1), atol=1e-5)


def test_presets_follow_the_official_configs():
    from fewshot.datasets import DATASETS

    for name in ("imagenet", "eurosat", "flowers102", "ucf101", "fgvc-aircraft", "oxford-pets"):
        assert name in DATASETS.names()
    flowers = TipAdapterFConfig.build("fewshot", 16, dataset="flowers102")
    assert (flowers.search_scale, flowers.init_alpha, flowers.epochs) == ((50.0, 50.0), 10.0, 20)
    assert TipAdapterFConfig.build("fewshot", 1, dataset="eurosat").epochs == 100
    imagenet = TipAdapterConfig.build("base2novel", 4, dataset="imagenet")
    assert imagenet.templates == TIP_IMAGENET and imagenet.search_scale == (7.0, 3.0)
    assert TipAdapterConfig.build("fewshot", 16, dataset="ucf101").init_alpha == 3.0
    assert TipAdapterConfig.build("fewshot", 16, dataset="cub") == TipAdapterConfig()
    default = TipAdapterFConfig()
    assert (default.lr, default.eps, default.batch_size, default.search_step) == (0.001, 1e-4, 256, (200, 20))
    with pytest.raises(ConfigError, match="protocol"):
        TipAdapterConfig(protocol="test")
    assert TipAdapterConfig.build(overrides={"protocol": "original"}).protocol == "original"


def test_only_the_original_protocol_hands_test_data(monkeypatch, feature_cache, tmp_path: Path):
    from fewshot.leaderboard import build_leaderboard
    from fewshot.methods import METHODS
    from fewshot.sweeps import sweep

    for name in METHODS.names():  # no default config of any built-in method reads test data
        cls = METHODS.get(name)
        assert not cls.reads_test(cls.config_cls())
    overrides = (("protocol", "original"), ("epochs", "3"), ("search_step", "40,10"))
    plain, shuffled, _, _ = fit_with_shuffled_test_labels(
        monkeypatch, feature_cache, "tip-adapter-f", overrides
    )
    ctx = plain.prepared.ctx
    assert ctx.test_for_selection is not None and ctx.full_val is not None
    assert len(ctx.full_val) > len(ctx.val)  # the whole val split of the training classes
    assert not torch.equal(ctx.test_for_selection.labels, shuffled.prepared.ctx.test_for_selection.labels)
    assert plain.provenance["selected_on_test"] is True
    assert {"beta", "alpha", "epoch", "kept"} <= set(plain.provenance["selected"])
    spec = RunSpec("tip-adapter-f", "toy-colors", shots=4, seed=1, overrides=overrides)
    (result,) = sweep([spec], results_dir=tmp_path, cache=feature_cache)
    assert result.ok and result.provenance["selected_on_test"] is True
    (row,) = build_leaderboard(tmp_path).fewshot.to_dict("records")
    assert row["Method"].startswith("tip-adapter-f[") and row["toy-colors"].endswith("‡")


def _test_set(ctx, seed: int = 9) -> FeatureSet:
    """A random stand-in for the test split of the training classes (raw features)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(60) % len(CLASSES)
    features = ctx.val.features[torch.randint(0, len(ctx.val), (60,), generator=g)]
    return FeatureSet(features + 0.3 * torch.randn(features.shape, generator=g), labels, ("t",) * 60)


def _accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float((logits.argmax(dim=1) == labels).float().mean())


def test_original_protocol_searches_on_test_without_a_val_split(backbone, colors):
    """ImageNet's case (no val split of its own, so ``full_val`` is None): the search runs on
    the test split, as main_imagenet.py does; with a full val split, on that split."""
    test = _test_set(colors)
    config = TipAdapterConfig(protocol="original", search_step=(30, 8))
    on_test = fit(TipAdapter, config, dataclasses.replace(colors, test_for_selection=test))
    weights = text_weights(backbone, colors.template, colors.classnames)
    f = F.normalize(test.features, dim=-1)
    scale, steps = config.search_scale, config.search_step
    want, _ = naive_search(f, test.labels, weights, on_test.keys, on_test.values, scale, steps)
    assert (on_test.beta, on_test.alpha) == pytest.approx(want)
    full_val = _test_set(colors, seed=4)
    on_val = fit(TipAdapter, config, dataclasses.replace(colors, test_for_selection=test, full_val=full_val))
    f = F.normalize(full_val.features, dim=-1)
    want, _ = naive_search(f, full_val.labels, weights, on_val.keys, on_val.values, scale, steps)
    assert (on_val.beta, on_val.alpha) == pytest.approx(want)
    with pytest.raises(FewshotError, match="reads_test"):
        fit(TipAdapter, config, colors)  # no test data handed over


def test_original_tip_f_reports_the_max_of_best_epoch_and_searched(backbone, colors):
    """The kept keys are the best-test epoch's; predict uses whichever of (init β, α) and the
    searched pair scores higher on test, as the released code prints the max of both."""
    test = _test_set(colors)
    ctx = dataclasses.replace(colors, test_for_selection=test, full_val=_test_set(colors, seed=4))
    config = TipAdapterFConfig(protocol="original", epochs=4, search_step=(30, 8), lr=0.01)
    adapter = fit(TipAdapterF, config, ctx)
    chosen = adapter.selected()
    assert 0 <= chosen["epoch"] < 4 and chosen["kept"] in ("initial", "searched")
    best_epoch = _accuracy(adapter.logits(test.features, config.init_beta, config.init_alpha), test.labels)
    final = _accuracy(adapter.predict(dataclasses.replace(_query(ctx), features=test.features)), test.labels)
    weights = text_weights(backbone, ctx.template, ctx.classnames)
    f = F.normalize(ctx.full_val.features, dim=-1)
    keys, values = adapter.keys, adapter.values
    (beta, alpha), _ = naive_search(f, ctx.full_val.labels, weights, keys, values, (7.0, 3.0), (30, 8))
    searched = _accuracy(adapter.logits(test.features, beta, alpha), test.labels)
    assert final == pytest.approx(max(best_epoch, searched))
    # The same training kept to its last epoch (no test scoring draws anything random): the
    # best-test epoch scores at least as well on test as the last one.
    last = fit(TipAdapterF, dataclasses.replace(config, protocol="fewshot-val", search=False), colors)
    last_accuracy = _accuracy(last.logits(test.features), test.labels)
    assert best_epoch >= last_accuracy
    if chosen["epoch"] == 3:
        assert torch.equal(adapter.keys, last.keys)
    # Without the search the kept epoch is still recorded.
    unsearched = fit(TipAdapterF, dataclasses.replace(config, search=False), ctx)
    assert unsearched.selected()["epoch"] == chosen["epoch"]
    if chosen["kept"] == "initial":
        assert best_epoch > searched
        assert (chosen["beta"], chosen["alpha"]) == (config.init_beta, config.init_alpha)
    else:
        assert (chosen["beta"], chosen["alpha"]) == pytest.approx((beta, alpha))


def test_toy_colors_16_shots_beats_zero_shot(tmp_path: Path, feature_cache):
    """Measured (seed 1): zero-shot 40.83, Tip-Adapter 61.11, Tip-Adapter-F 65.56. Asserted
    with margin: Tip-Adapter at least 10 points above zero-shot, Tip-F not below Tip-Adapter."""
    from fewshot.sweeps import sweep

    specs = [RunSpec(m, "toy-colors", shots=16, seed=1) for m in ("zeroshot", "tip-adapter", "tip-adapter-f")]
    results = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert all(r.ok for r in results), [r.error for r in results]
    zs, tip, tip_f = (r.metrics["all"] for r in results)
    assert tip > zs + 10.0
    assert tip_f >= tip
