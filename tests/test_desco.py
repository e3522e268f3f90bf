"""desco and desco-zs: query strings, name dropout (training only), the restricted loss over
confusable classes, desco at init = desco-zs, learned weights, learning on the toy world."""

from __future__ import annotations

import dataclasses
import statistics

import pytest
import torch
import torch.nn.functional as F

from fewshot.descriptions import DescriptionSet
from fewshot.methods.desco import DesCo, DesCoConfig, DesCoZS, DesCoZSConfig, query_text
from fewshot.sweeps import sweep
from fewshot.testing import make_fit_context, make_query_batch
from fewshot.types import ConfigError, RunSpec

CLASSES = (0, 1, 2, 3, 4)
NAMES = ["circle", "square", "triangle", "star", "diamond"]  # toy-shapes, labels 0..4
NOVEL = (5, 6, 7)

# Descriptions that never mention a class name, so a dropped name is visible in the text.
PLAIN = {
    "circle": ("no corners", "a round outline."),
    "square": ("four equal sides", "used in tiling"),
    "triangle": ("three corners",),
    "star": ("five points", "can look like a sparkle", "pointed tips"),
    "diamond": ("a tilted outline",),
}
# The prompts desco-zs must encode for PLAIN with prefix "a photo of a", written by hand
# (DCLIP's phrase rule, the descriptor's final "." dropped, one "." at the end).
EXPECTED = {
    "circle": [
        "a photo of a circle, which has no corners.",
        "a photo of a circle, which is a round outline.",
    ],
    "square": [
        "a photo of a square, which has four equal sides.",
        "a photo of a square, which is used in tiling.",
    ],
    "triangle": ["a photo of a triangle, which has three corners."],
    "star": [
        "a photo of a star, which has five points.",
        "a photo of a star, which can look like a sparkle.",
        "a photo of a star, which has pointed tips.",
    ],
    "diamond": ["a photo of a diamond, which is a tilted outline."],
}
PLAIN_SET = DescriptionSet("plain", PLAIN)


@pytest.fixture(scope="module")
def ctx():
    return make_fit_context("toy", "toy-shapes", classes=CLASSES, shots=2, aug_views=2)


@pytest.fixture(scope="module")
def query():
    return make_query_batch("toy", "toy-shapes", classes=CLASSES, per_class=3)


def fit(cls, config, context, **changes):
    """Fit on ``context`` with a freshly seeded generator (and any FitContext fields changed)."""
    context = dataclasses.replace(context, generator=torch.Generator().manual_seed(context.seed), **changes)
    adapter = cls(config)
    adapter.fit(context)
    return adapter


def mean_embedding(backbone, prompts: list[str]) -> torch.Tensor:
    """Normalised mean of the normalised embeddings of ``prompts`` (open_clip's encode_text)."""
    with torch.no_grad():
        text = F.normalize(backbone.model.encode_text(backbone.tokenize(prompts)).float(), dim=-1)
    return F.normalize(text.mean(dim=0), dim=0)


def scores(backbone, features: torch.Tensor, classes: list[torch.Tensor]) -> torch.Tensor:
    return backbone.logit_scale * F.normalize(features.float(), dim=-1) @ torch.stack(classes).t()


def test_query_text_and_config_checks():
    assert query_text("sea_lion", "has flippers") == "sea lion, which has flippers"
    assert query_text("sea_lion", "has flippers", with_name=False) == "which has flippers"
    assert query_text("circle", "a circle that is round.") == "circle, which is a circle that is round"
    assert query_text("circle", None, with_name=False) == "circle"  # a name-only query keeps its name
    with pytest.raises(ConfigError):
        DesCoConfig(p_drop=1.5)
    with pytest.raises(ConfigError):
        DesCoConfig(confusables=-1)
    assert DesCoConfig.build("fewshot", 16, dataset="toy-shapes").descriptions == "toy"
    assert DesCoConfig.build("fewshot", 16, dataset="dtd").descriptions == "dclip"
    assert DesCoZSConfig.build("fewshot", 0, dataset="dtd").descriptions == "dclip"


def test_desco_zs_scores_the_hand_written_queries(ctx, query):
    sets = {"descriptions": PLAIN_SET}
    method = fit(DesCoZS, DesCoZSConfig(descriptions="plain"), ctx, **sets)
    logits = method.predict(dataclasses.replace(query, **sets))
    expected = scores(
        ctx.backbone, query.features, [mean_embedding(ctx.backbone, EXPECTED[n]) for n in NAMES]
    )
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-5)


def test_desco_at_init_equals_desco_zs_with_the_same_prefix(ctx, query):
    """p_drop 0, k 0, no weights, no step: the learned context is "a photo of a" itself."""
    zs = fit(DesCoZS, DesCoZSConfig(descriptions="toy"), ctx)
    desco = fit(DesCo, DesCoConfig(descriptions="toy", p_drop=0.0, confusables=0, epochs=0), ctx)
    torch.testing.assert_close(desco.predict(query), zs.predict(query), atol=1e-4, rtol=1e-5)
    novel = make_query_batch("toy", "toy-shapes", classes=NOVEL, per_class=2)
    torch.testing.assert_close(desco.predict(novel), zs.predict(novel), atol=1e-4, rtol=1e-5)
    other = fit(DesCoZS, DesCoZSConfig(descriptions="toy", prefix="a drawing of a"), ctx)
    assert not torch.allclose(other.predict(query), zs.predict(query), atol=1e-3)  # the prefix matters


def test_name_dropout_drops_names_in_training_only(ctx, query):
    sets = {"descriptions": PLAIN_SET}
    config = DesCoConfig(descriptions="plain", p_drop=1.0, epochs=0, per_step=0)
    desco = fit(DesCo, config, ctx, **sets)
    drawn = desco.training_queries(torch.Generator().manual_seed(0))
    assert len(drawn) == sum(len(v) for v in PLAIN.values())
    assert not any(name in text for text in drawn for name in NAMES)
    # The training class embeddings are those of the name-free prompts (written by hand).
    with torch.no_grad():
        trained = desco.training_text(torch.Generator().manual_seed(0))
    bare = [mean_embedding(ctx.backbone, [p.replace(f" {n},", "") for p in EXPECTED[n]]) for n in NAMES]
    torch.testing.assert_close(trained, torch.stack(bare), atol=1e-4, rtol=1e-5)
    # Prediction keeps every name: the embeddings of the named prompts.
    logits = desco.predict(dataclasses.replace(query, **sets))
    named = scores(ctx.backbone, query.features, [mean_embedding(ctx.backbone, EXPECTED[n]) for n in NAMES])
    torch.testing.assert_close(logits, named, atol=1e-4, rtol=1e-5)
    kept = fit(DesCo, dataclasses.replace(config, p_drop=0.0), ctx, **sets)
    assert all(
        text.startswith(tuple(NAMES)) for text in kept.training_queries(torch.Generator().manual_seed(0))
    )
    half = fit(DesCo, dataclasses.replace(config, p_drop=0.5), ctx, **sets)
    generator = torch.Generator().manual_seed(0)
    dropped = [not t.startswith(tuple(NAMES)) for _ in range(40) for t in half.training_queries(generator)]
    assert 0.4 < statistics.mean(dropped) < 0.6


def test_per_step_caps_the_queries_of_a_class(ctx):
    desco = fit(DesCo, DesCoConfig(descriptions="plain", per_step=2, epochs=0), ctx, descriptions=PLAIN_SET)
    rows, _ = desco.training_draw(torch.Generator().manual_seed(0))
    owner = desco.queries.owner()[rows]
    assert torch.bincount(owner).tolist() == [2, 2, 1, 2, 1]  # star's three cut to two


def test_prediction_ignores_every_random_state(ctx, query):
    """Name dropout is off at evaluation: a fitted desco predicts the same logits whatever the
    global seed or the fit generator's state."""
    desco = fit(DesCo, DesCoConfig(descriptions="toy", p_drop=0.5, epochs=2, batch_size=4), ctx)
    torch.manual_seed(1)
    first = desco.predict(query)
    desco._text.clear()  # recompute the class embeddings
    torch.manual_seed(2)
    torch.rand(100)
    assert torch.equal(desco.predict(query), first)


def _neighbours(backbone, template: str, names: list[str], k: int) -> list[list[int]]:
    """Each class's k nearest other classes by cosine of its plain prompt, by a full sort."""
    with torch.no_grad():
        text = F.normalize(
            backbone.model.encode_text(backbone.tokenize([template.format(n) for n in names])).float(), dim=-1
        )
    similarity = (text @ text.t()).tolist()
    return [
        sorted((j for j in range(len(names)) if j != i), key=lambda j: -similarity[i][j])[:k]
        for i in range(len(names))
    ]


def test_restricted_loss_is_cross_entropy_over_the_positive_and_its_confusables(ctx):
    k = 2
    desco = fit(DesCo, DesCoConfig(descriptions="toy", confusables=k, epochs=0), ctx)
    neighbours = _neighbours(ctx.backbone, ctx.template, ctx.classnames, k)
    assert desco.confusables.tolist() == neighbours
    logits = torch.randn(8, len(CLASSES), generator=torch.Generator().manual_seed(3)) * 5
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 2, 4])
    restricted = []
    for row, y in zip(logits.tolist(), labels.tolist(), strict=True):
        kept = [row[y]] + [row[j] for j in neighbours[y]]
        restricted.append(-kept[0] + torch.tensor(kept).logsumexp(0).item())
    full = F.cross_entropy(logits, labels).item()
    assert desco.loss(logits, labels).item() == pytest.approx(full + statistics.mean(restricted), abs=1e-5)
    off = fit(DesCo, DesCoConfig(descriptions="toy", confusables=0, epochs=0), ctx)
    assert off.loss(logits, labels).item() == pytest.approx(full, abs=1e-6)


def test_learned_weights_start_uniform_and_leave_novel_classes_uniform(ctx, query):
    settings = {"descriptions": "toy", "p_drop": 0.0, "confusables": 0}
    plain = fit(DesCo, DesCoConfig(epochs=0, **settings), ctx)
    weighted = fit(DesCo, DesCoConfig(epochs=0, weights=True, **settings), ctx)
    torch.testing.assert_close(weighted.predict(query), plain.predict(query), atol=1e-5, rtol=1e-5)
    trained = fit(DesCo, DesCoConfig(epochs=5, batch_size=4, lr=0.5, weights=True, **settings), ctx)
    assert trained.weights.logits.abs().max().item() > 1e-4
    assert trained.trainable_parameters() == trained.context.numel() + trained.weights.logits.numel()
    # A novel class is scored with uniform weights: the same as a weightless copy of the context.
    uniform = fit(DesCo, DesCoConfig(epochs=0, **settings), ctx)
    uniform.context = trained.context
    novel = make_query_batch("toy", "toy-shapes", classes=NOVEL, per_class=2)
    torch.testing.assert_close(trained.predict(novel), uniform.predict(novel), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(trained.predict(query), uniform.predict(query), atol=1e-4)


def test_desco_learns_beyond_desco_zs_on_the_toy_world(tmp_path, feature_cache):
    """16 shots of toy-colors (2 cached views, 20 epochs to keep it fast), seed 1."""
    specs = [
        RunSpec("desco-zs", "toy-colors", shots=0, seed=1, aug_views=2),
        RunSpec("desco", "toy-colors", shots=16, seed=1, overrides=(("epochs", "20"),), aug_views=2),
    ]
    results = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert all(r.ok for r in results), [r.error for r in results]
    accuracy = {
        m: statistics.mean(r.metrics["all"] for r in results if r.spec.method == m)
        for m in ("desco", "desco-zs")
    }
    assert accuracy["desco"] > accuracy["desco-zs"] + 5, accuracy
