"""CLIP-Adapter, CLAP and LP++: each checked against the official formulas computed here, a
validation-only check through the runner, and learning on the toy world."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.methods.clap import Clap, ClapConfig, clap_loss, online_views
from fewshot.methods.clip_adapter import ClipAdapter, ClipAdapterConfig
from fewshot.methods.lp_plus_plus import LPPlusPlus, LPPlusPlusConfig, lr_alpha, lr_weights
from fewshot.sweeps import sweep
from fewshot.testing import make_fit_context, make_query_batch
from fewshot.types import ConfigError, FewshotError, RunSpec

CLASSES = (0, 1, 2, 3)

SELECT_7 = (  # CLAP datasets/imagenet_templates.py and CLIP's notebook, as written there
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
    """toy-colors, 4 classes, 4 shots, 2 cached views."""
    return make_fit_context(backbone, "toy-colors", classes=CLASSES, shots=4, aug_views=2)


@pytest.fixture(scope="module")
def query(backbone):
    return make_query_batch(backbone, "toy-colors", classes=CLASSES, per_class=3)


def fit(cls, config, context, **changes):
    """Fit on ``context`` with a freshly seeded generator (and any FitContext fields changed)."""
    context = dataclasses.replace(context, generator=torch.Generator().manual_seed(context.seed), **changes)
    adapter = cls(config)
    adapter.fit(context)
    return adapter


def zeroshot_logits(backbone, template: str, names: list[str], features: torch.Tensor) -> torch.Tensor:
    """CLIP zero-shot written out: logit_scale · normalised image · normalised text."""
    text = backbone.encode_texts([template.format(n) for n in names], normalize=False).float()
    text = text / text.norm(dim=-1, keepdim=True)
    image = features.float() / features.float().norm(dim=-1, keepdim=True)
    return backbone.logit_scale * image @ text.t()


# ------------------------------------------------------------------------------------------
# CLIP-Adapter


def test_clip_adapter_with_ratio_zero_is_zeroshot(backbone, colors, query):
    adapter = fit(ClipAdapter, ClipAdapterConfig(alpha=0.0, epochs=2, batch_size=4), colors)
    expected = zeroshot_logits(backbone, query.template, query.classnames, query.features)
    assert torch.allclose(adapter.predict(query), expected, atol=1e-4)
    mixed = fit(ClipAdapter, ClipAdapterConfig(alpha=0.2, epochs=2, batch_size=4), colors)
    assert not torch.allclose(mixed.predict(query), expected, atol=1e-2)  # the adapter does act


def test_clip_adapter_is_a_bias_free_bottleneck_with_two_relus(backbone, colors, query):
    adapter = fit(ClipAdapter, ClipAdapterConfig(epochs=1, batch_size=4), colors)
    d = backbone.embed_dim
    linear1, relu1, linear2, relu2 = list(adapter.adapter.fc)
    assert (linear1.in_features, linear1.out_features, linear2.out_features) == (d, d // 4, d)
    assert linear1.bias is None and linear2.bias is None
    assert isinstance(relu1, torch.nn.ReLU) and isinstance(relu2, torch.nn.ReLU)
    assert adapter.trainable_parameters() == 2 * d * (d // 4)
    # f' = 0.2 · ReLU(W2 ReLU(W1 f)) + 0.8 f, then CLIP's cosine logits, written out here.
    f = query.features.float()
    hidden = torch.relu(f @ linear1.weight.t())
    mixed = 0.2 * torch.relu(hidden @ linear2.weight.t()) + 0.8 * f
    expected = zeroshot_logits(backbone, query.template, query.classnames, mixed)
    assert torch.allclose(adapter.predict(query), expected, atol=1e-4)
    novel = make_query_batch(backbone, "toy-colors", classes=(5, 6), per_class=2)
    assert adapter.predict(novel).shape == (4, 2)  # text weights for any class name
    assert adapter.selected() == {"alpha": 0.2}


def test_clip_adapter_selects_alpha_on_val_with_one_adapter_per_ratio(colors):
    settings = {"epochs": 3, "batch_size": 4}
    chosen = fit(ClipAdapter, ClipAdapterConfig(select_alpha=True, **settings), colors)
    assert set(chosen.val_accuracy) == {0.2, 0.4, 0.6, 0.8}
    best = max(chosen.val_accuracy.values())
    first_best = next(a for a, acc in chosen.val_accuracy.items() if acc == best)
    assert chosen.selected() == {"alpha": first_best}
    # Every candidate starts from the run's random state: the α = 0.2 one is the default fit.
    default = fit(ClipAdapter, ClipAdapterConfig(**settings), colors)
    with torch.no_grad():
        text = default.text_weights(colors.classnames, colors.template)
        scores = default._scores(default.adapter, colors.val.features, text)
    accuracy = (scores.argmax(-1) == colors.val.labels).float().mean().item() * 100
    assert chosen.val_accuracy[0.2] == pytest.approx(accuracy)
    with pytest.raises(ConfigError):
        ClipAdapterConfig(alpha=1.5)


def test_clip_adapter_presets_follow_coop_epochs():
    assert ClipAdapterConfig.build("fewshot", 1).epochs == 50
    assert ClipAdapterConfig.build("fewshot", 4).epochs == 100
    assert ClipAdapterConfig.build("fewshot", 16).epochs == 200
    assert ClipAdapterConfig.build("fewshot", 16, dataset="imagenet").epochs == 50
    cfg = ClipAdapterConfig.build("fewshot", 16)
    assert (cfg.lr, cfg.batch_size, cfg.momentum, cfg.weight_decay, cfg.alpha) == (0.002, 32, 0.9, 5e-4, 0.2)


# ------------------------------------------------------------------------------------------
# CLAP


def test_clap_before_its_first_step_is_zeroshot(backbone, colors, query):
    adapter = fit(Clap, ClapConfig(epochs=0), colors)
    expected = zeroshot_logits(backbone, query.template, query.classnames, query.features)
    assert torch.allclose(adapter.predict(query), expected, atol=1e-4)
    trained = fit(Clap, ClapConfig(epochs=3), colors)
    assert not torch.allclose(trained.predict(query), expected, atol=1e-3)
    reordered = dataclasses.replace(query, classnames=query.classnames[::-1])
    assert torch.allclose(trained.predict(reordered), trained.predict(query).flip(-1))
    novel = make_query_batch(backbone, "toy-colors", classes=(5, 6), per_class=2)
    with pytest.raises(FewshotError, match="not trained on"):
        trained.predict(novel)


def test_clap_anchor_strengths_are_zeroshot_confidence_per_class(backbone, colors):
    adapter = fit(Clap, ClapConfig(epochs=0), colors)
    pool = colors.train_views
    logits = zeroshot_logits(backbone, colors.template, colors.classnames, pool.features)
    probs = torch.softmax(logits, dim=-1)
    for c in range(len(CLASSES)):
        rows = [i for i in range(len(pool)) if pool.labels[i] == c]
        assert adapter.strengths[c].item() == pytest.approx(
            statistics.mean(probs[i, c].item() for i in rows), abs=1e-5
        )
    raw = backbone.encode_texts([colors.template.format(n) for n in colors.classnames], normalize=False)
    assert torch.allclose(adapter.anchors, raw.float(), atol=1e-5)  # unnormalised text features


def test_clap_loss_is_cross_entropy_plus_class_weighted_squared_distance():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(6, 3, generator=g), torch.tensor([0, 1, 2, 2, 1, 0])
    w, t, lam = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g), torch.rand(3, generator=g)
    ce = -statistics.mean(
        logits[i, labels[i]].item() - np.log(np.exp(logits[i].numpy().astype(np.float64)).sum())
        for i in range(6)
    )
    penalty = statistics.mean(
        lam[c].item() * sum((w[c, k] - t[c, k]).item() ** 2 for k in range(5)) for c in range(3)
    )
    assert clap_loss(logits, labels, w, t, lam).item() == pytest.approx(ce + penalty, rel=1e-5)


def test_clap_pool_without_cached_views_is_encoded_passes_of_the_support_set(backbone, colors):
    online = dataclasses.replace(colors, train_views=None)
    pool = online_views(online, 3)  # CLAP encodes 20 such passes when the harness caches none
    assert len(pool) == 3 * len(colors.train)
    assert torch.equal(pool.labels, colors.train.labels.repeat(3))
    adapter = fit(Clap, ClapConfig(epochs=1), online)
    assert adapter.strengths.shape == (len(CLASSES),) and bool((adapter.strengths > 0).all())


def test_clap_imagenet_anchors_average_unnormalised_features(backbone, colors):
    cfg = ClapConfig.build("fewshot", 16, dataset="imagenet")
    assert cfg.templates == (*SELECT_7, "a photo of a {}.")
    settings = (cfg.lr, cfg.batch_size, cfg.epochs, cfg.weight_decay, cfg.warmup_epochs)
    assert settings == (0.1, 256, 300, 0.0, 1)
    adapter = fit(Clap, dataclasses.replace(cfg, epochs=0), colors)
    names = colors.classnames
    each = [
        backbone.encode_texts([t.format(n) for n in names], normalize=False).float() for t in cfg.templates
    ]
    assert torch.allclose(adapter.anchors, sum(each) / len(each), atol=1e-5)


# ------------------------------------------------------------------------------------------
# LP++


def lpp_support(backbone, context, augmented=False):
    """Support features (clean, or view 0 of the cached views), L2-normalised, their labels,
    and the normalised single-template text weights."""
    n = len(context.train)
    source = context.train_views if augmented else context.train
    f = source.features[:n].float()
    f = f / f.norm(dim=-1, keepdim=True)
    text = backbone.encode_texts([context.template.format(c) for c in context.classnames], normalize=False)
    return f, source.labels[:n], text.float() / text.float().norm(dim=-1, keepdim=True)


@pytest.mark.parametrize("augmented", [False, True])
def test_lpp_at_initialisation_is_centroids_plus_weighted_text_logits(backbone, colors, query, augmented):
    adapter = fit(LPPlusPlus, LPPlusPlusConfig(epochs=0, augmented=augmented), colors)
    f, y, text = lpp_support(backbone, colors, augmented)
    sums = torch.stack([f[y == c].sum(0) for c in range(len(CLASSES))])  # per-class sums, no mean
    own = [statistics.mean((f[i] @ text[c]).item() for i in range(len(y)) if y[i] == c) for c in range(4)]
    alpha0 = 250.0 * statistics.mean(own)
    bound = 1.0 / f.shape[1] ** 0.5  # nn.Linear's bias init, the fit's only random draw
    bias = torch.empty(4).uniform_(-bound, bound, generator=torch.Generator().manual_seed(colors.seed))
    q = query.features.float() / query.features.float().norm(dim=-1, keepdim=True)
    expected = q @ sums.t() + bias + alpha0 * (q @ text.t())
    assert torch.allclose(adapter.predict(query), expected, atol=1e-3)
    assert adapter.selected() == {"epoch": 0}


def test_lpp_step_sizes_come_from_the_data(backbone, colors):
    f, _, text = lpp_support(backbone, colors)
    gram = (f.t() @ f).double().numpy()
    assert lr_weights(f) == pytest.approx(4 * len(f) / np.linalg.eigvalsh(gram).max(), rel=1e-6)
    per_class = [sum((f[i] @ text[c]).item() ** 2 for i in range(len(f))) for c in range(4)]
    assert lr_alpha(f, text) == pytest.approx(len(f) / (4 * max(per_class)), rel=1e-5)


def test_lpp_alpha_moves_only_every_ten_epochs(colors):
    init = fit(LPPlusPlus, LPPlusPlusConfig(epochs=0), colors).state.alpha
    nine = fit(LPPlusPlus, LPPlusPlusConfig(epochs=9), colors)
    assert torch.equal(nine.state.alpha, init)  # whichever of epochs 0-9 val picked
    # A val set no epoch scores on keeps the last epoch (the official ">="), so the kept
    # state is the trajectory's own: α has not moved after 9 epochs and has after 10.
    blind = dataclasses.replace(colors, val=dataclasses.replace(colors.val, labels=colors.val.labels * 0 - 1))
    nine, ten = (fit(LPPlusPlus, LPPlusPlusConfig(epochs=n), blind) for n in (9, 10))
    assert (nine.selected()["epoch"], ten.selected()["epoch"]) == (9, 10)
    assert torch.equal(nine.state.alpha, init) and not torch.equal(ten.state.alpha, init)
    frozen = fit(LPPlusPlus, LPPlusPlusConfig(epochs=10, alpha_every=11), blind)
    assert torch.equal(frozen.state.alpha, init)
    assert LPPlusPlusConfig.build("fewshot", 16, dataset="imagenet").templates == SELECT_7


# ------------------------------------------------------------------------------------------
# Learning on the toy world (toy-colors, seed 1; zero-shot 40.83)


def test_each_method_beats_zeroshot_at_16_shots_and_clap_holds_at_one(tmp_path: Path, feature_cache):
    specs = [RunSpec("zeroshot", "toy-colors", shots=0, seed=1)]
    specs += [RunSpec(m, "toy-colors", shots=16, seed=1) for m in ("clip-adapter", "clap", "lp++")]
    specs.append(RunSpec("clap", "toy-colors", shots=1, seed=1))
    results = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert all(r.ok for r in results), [r.error for r in results]
    acc = {(r.spec.method, r.spec.shots): r.metrics["all"] for r in results}
    zeroshot = acc[("zeroshot", 0)]
    assert acc[("clip-adapter", 16)] > zeroshot + 1.0
    assert acc[("clap", 16)] > zeroshot + 2.0
    assert acc[("lp++", 16)] > zeroshot + 15.0
    assert acc[("clap", 1)] >= zeroshot - 1.0
