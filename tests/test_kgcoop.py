"""KgCoOp: the knowledge-guided term, its templates, equivalence with CoOp, learning on the toy world."""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fewshot.methods.coop import CoOp, CoOpConfig
from fewshot.methods.kgcoop import KgCoOp, KgCoOpConfig
from fewshot.sweeps import sweep
from fewshot.testing import make_fit_context, make_query_batch
from fewshot.types import PROTOCOLS, ConfigError, RunSpec

CLASSES = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def backbone():
    from fewshot.backbones import load_backbone

    return load_backbone("toy")


@pytest.fixture(scope="module")
def objects(backbone):
    """toy-objects (template "a photo of a {}."), 4 classes, 4 shots, 2 cached views."""
    return make_fit_context(backbone, "toy-objects", classes=CLASSES, shots=4, aug_views=2)


@pytest.fixture(scope="module")
def colors(backbone):
    """toy-colors (template "a photo of a {} shape."), 4 classes, 4 shots, 2 cached views."""
    return make_fit_context(backbone, "toy-colors", classes=CLASSES, shots=4, aug_views=2)


def fit(cls, config, context, **changes):
    """Fit on ``context`` with a freshly seeded generator (and any FitContext fields changed)."""
    context = dataclasses.replace(context, generator=torch.Generator().manual_seed(context.seed), **changes)
    adapter = cls(config)
    adapter.fit(context)
    return adapter


def hand_crafted(backbone, template: str, names: list[str]) -> torch.Tensor:
    """Normalised features of the hand-crafted prompts, through open_clip's own encode_text."""
    with torch.no_grad():
        features = backbone.model.encode_text(backbone.tokenize([template.format(n) for n in names]))
    return F.normalize(features.float(), dim=-1)


def test_weight_zero_trains_exactly_like_coop(backbone, objects):
    settings = {"n_ctx": 4, "ctx_init": "a photo of a", "epochs": 6, "batch_size": 4}
    kgcoop = fit(KgCoOp, KgCoOpConfig(weight=0.0, **settings), objects)
    coop = fit(CoOp, CoOpConfig(**settings), objects)
    assert torch.equal(kgcoop.learner.ctx, coop.learner.ctx)
    query = make_query_batch(backbone, "toy-objects", classes=CLASSES)
    assert torch.equal(kgcoop.predict(query), coop.predict(query))
    weighted = fit(KgCoOp, KgCoOpConfig(weight=8.0, **settings), objects)  # the term does act
    assert not torch.allclose(weighted.learner.ctx, coop.learner.ctx)


def test_knowledge_gap_is_one_minus_mean_cosine_to_the_hand_crafted_prompts(backbone, colors):
    adapter = fit(KgCoOp, KgCoOpConfig(epochs=3, batch_size=4), colors)
    assert adapter.template == "a photo of a {} shape."  # the dataset's template (not DTD)
    names = colors.classnames
    expected_clip = hand_crafted(backbone, colors.template, names)
    assert torch.allclose(adapter.clip_text, expected_clip, atol=1e-5)
    learned = adapter.text_features(names)  # CoOp's path: the learned prompts alone
    expected = 1.0 - (learned * expected_clip).sum(-1).mean()
    gap = adapter.knowledge_gap()
    assert gap.item() == pytest.approx(expected.item(), abs=1e-5)
    assert gap.item() > 1e-3
    # Training passes unnormalised text features (C, D): the term is a cosine, scale-free.
    assert adapter.knowledge_gap(3.0 * learned).item() == pytest.approx(expected.item(), abs=1e-5)


def test_knowledge_gap_vanishes_at_init_when_the_template_is_the_init_prompt(backbone, objects, colors):
    """ctx = the embeddings of "a photo of a" and template "a photo of a {}.": the learned
    prompt *is* the hand-crafted prompt before training."""
    assert objects.template == "a photo of a {}."
    untrained = fit(KgCoOp, KgCoOpConfig(epochs=0), objects)
    assert abs(untrained.knowledge_gap().item()) < 1e-5
    other_template = fit(KgCoOp, KgCoOpConfig(epochs=0), colors)  # "a photo of a {} shape."
    assert other_template.knowledge_gap().item() > 1e-3


def test_dtd_uses_kgcoops_own_template(backbone, objects):
    """The preset puts KgCoOp's DTD template into the config; other datasets keep their own."""
    names = objects.classnames
    dtd_config = KgCoOpConfig.build("fewshot", 16, {"epochs": 0}, dataset="dtd")
    assert dtd_config.template == "a photo of a {}, a type of texture."
    dtd = fit(KgCoOp, dtd_config, objects, dataset="dtd", template="{} texture.")
    assert dtd.template == "a photo of a {}, a type of texture." and dtd.config is dtd_config
    assert torch.allclose(dtd.clip_text, hand_crafted(backbone, dtd.template, names), atol=1e-5)
    colors_config = KgCoOpConfig.build("fewshot", 16, {"epochs": 0}, dataset="toy-colors")
    assert colors_config.template == "a photo of a {} shape."  # the dataset's own, in the record
    food_config = KgCoOpConfig.build("base2novel", 16, {}, dataset="food101")
    assert food_config.template == "a photo of {}, a type of food."  # CoOp's table
    other_config = KgCoOpConfig.build("fewshot", 16, {"epochs": 0}, dataset="my-textures")
    assert other_config.template == ""  # not registered: the spec's template at fit time
    other = fit(KgCoOp, other_config, objects, dataset="my-textures", template="{} texture.")
    assert other.template == "{} texture."
    assert torch.allclose(other.clip_text, hand_crafted(backbone, "{} texture.", names), atol=1e-5)


def test_the_term_keeps_learned_prompts_near_the_hand_crafted_ones(objects):
    settings = {"epochs": 25, "batch_size": 4, "lr": 0.01}
    free = fit(KgCoOp, KgCoOpConfig(weight=0.0, **settings), objects)
    guided = fit(KgCoOp, KgCoOpConfig(weight=8.0, **settings), objects)
    assert free.knowledge_gap().item() > 1e-3  # cross-entropy alone moves away from the init prompt
    assert guided.knowledge_gap().item() < 0.5 * free.knowledge_gap().item()


def test_one_published_config_for_every_protocol():
    for protocol in PROTOCOLS:
        for shots in (1, 4, 16):
            cfg = KgCoOpConfig.build(protocol, shots)  # never CoOp's 50/200-epoch presets
            assert (cfg.n_ctx, cfg.ctx_init, cfg.epochs, cfg.batch_size, cfg.lr, cfg.weight) == (
                4,
                "a photo of a",
                100,
                128,
                0.002,
                8.0,
            )
            assert (cfg.class_specific, cfg.class_token_position, cfg.warmup_epochs, cfg.warmup_lr) == (
                False,
                "end",
                1,
                1e-5,
            )
    assert KgCoOpConfig.build(overrides={"weight": "2.5"}).weight == 2.5
    with pytest.raises(ConfigError, match="weight"):
        KgCoOpConfig(weight=-1.0)
    with pytest.raises(ConfigError, match="class_token_position"):
        KgCoOpConfig(class_token_position="start")


def test_16_shots_base2novel_beats_zeroshot_on_base(tmp_path: Path, feature_cache) -> None:
    """The full published config (100 epochs, batch 128) on toy-objects' base classes, seeds 1-3."""
    specs = [
        RunSpec(m, "toy-objects", shots=16, seed=s, protocol="base2novel")
        for m in ("zeroshot", "kgcoop")
        for s in (1, 2, 3)
    ]
    results = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert all(r.ok for r in results), [r.error for r in results]
    kgcoop = [r for r in results if r.spec.method == "kgcoop"]
    for result in kgcoop:
        assert result.metrics["base"] is not None and result.metrics["novel"] is not None
        assert result.config["weight"] == 8.0 and result.config["epochs"] == 100
    zeroshot = statistics.mean(r.metrics["base"] for r in results if r.spec.method == "zeroshot")
    assert statistics.mean(r.metrics["base"] for r in kgcoop) > zeroshot
