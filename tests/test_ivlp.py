"""IVLP: presets, what is trained, equivalences with frozen CLIP, learning on the toy world."""

from __future__ import annotations

import logging

import open_clip
import pytest
import torch
import torch.nn.functional as F

from fewshot.backbones import Backbone, load_backbone, state_dict_digest
from fewshot.methods.base import FitContext, Needs, QueryBatch
from fewshot.methods.ivlp import IVLP, IVLPConfig
from fewshot.prompting import UnsupportedVisionTowerError, encode_images_prompted
from fewshot.testing import make_fit_context, make_query_batch
from fewshot.types import BackboneSpec, ConfigError, FeatureSet

from ._runs import base2novel

TOY_LAYERS, TOY_WIDTH = 3, 128  # both towers of the toy backbone (fewshot/toyworld/toy_clip)


@pytest.fixture(scope="module")
def ctx() -> FitContext:
    return make_fit_context("toy", "toy-objects", classes=(0, 1, 2), shots=2, aug_views=0)


@pytest.fixture(scope="module")
def query() -> QueryBatch:
    return make_query_batch("toy", "toy-objects", classes=(0, 1, 2), needs=Needs.IMAGES)


def fit(ctx: FitContext, **overrides: object) -> IVLP:
    adapter = IVLP(IVLPConfig.build("base2novel", 16, overrides))
    ctx.generator.manual_seed(ctx.seed)
    adapter.fit(ctx)
    return adapter


def test_presets_follow_the_published_ivlp_config():
    # PromptSRC configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml, for every protocol.
    for protocol in ("base2novel", "fewshot", "cross-dataset", "domain-generalization"):
        cfg = IVLPConfig.build(protocol, 16)
        assert (cfg.n_ctx_text, cfg.n_ctx_vision, cfg.depth_text, cfg.depth_vision) == (4, 4, 9, 9)
        assert (cfg.lr, cfg.epochs, cfg.batch_size, cfg.ctx_init) == (0.0025, 20, 4, "a photo of a")
        assert (cfg.momentum, cfg.weight_decay, cfg.warmup_epochs, cfg.warmup_lr) == (0.9, 5e-4, 1, 1e-5)
    with pytest.raises(ConfigError, match="depth_text >= 1"):
        IVLPConfig(depth_text=0)
    with pytest.raises(ConfigError, match="lr"):
        IVLPConfig(lr=0)


def test_counts_only_the_prompts_and_leaves_the_backbone_untouched(ctx):
    before = state_dict_digest(ctx.backbone.model)
    adapter = fit(ctx, epochs=1)
    assert state_dict_digest(ctx.backbone.model) == before
    # Depth 9 is capped at the toy towers' 3 blocks: text ctx + 2 deep, 3 vision prompts.
    text = 4 * TOY_WIDTH + (TOY_LAYERS - 1) * 4 * TOY_WIDTH
    vision = TOY_LAYERS * 4 * TOY_WIDTH
    assert adapter.trainable_parameters() == text + vision
    assert adapter.needs is Needs.IMAGES and adapter.supports_novel


def test_shallow_untrained_ivlp_is_zero_shot_clip_with_a_photo_of_a(ctx, query):
    """Text depth 1, no vision prompts, no training: the context is the embedding of
    "a photo of a", so IVLP is frozen CLIP with the prompt "a photo of a {class}."."""
    adapter = fit(ctx, depth_text=1, depth_vision=0, epochs=0)
    names = ["red circle", "yellow triangle", "a class never seen"]
    expected_text = ctx.backbone.encode_texts([f"a photo of a {name}." for name in names])
    assert torch.allclose(adapter.text_features(names), expected_text, atol=1e-5, rtol=0)
    with torch.no_grad():
        logits = adapter.predict(QueryBatch(classnames=names, template="", images=query.images))
    image = F.normalize(ctx.backbone.encode_images(query.images), dim=-1)
    expected = ctx.backbone.logit_scale * image @ expected_text.t()
    assert torch.allclose(logits, expected, atol=1e-3, rtol=0)


def test_vision_prompts_reach_the_image_encoder(ctx, query):
    adapter = fit(ctx, epochs=1)
    prompts = list(adapter.prompts.vision)
    assert len(prompts) == TOY_LAYERS and all(p.shape == (4, TOY_WIDTH) for p in prompts)
    names = ["red circle", "blue circle"]
    with torch.no_grad():
        logits = adapter.predict(QueryBatch(classnames=names, template="", images=query.images))
        image = F.normalize(encode_images_prompted(ctx.backbone.model, query.images, prompts), dim=-1)
    expected = ctx.backbone.logit_scale * image @ adapter.text_features(names).t()
    assert torch.allclose(logits, expected, atol=1e-4, rtol=0)
    with torch.no_grad():
        frozen = F.normalize(ctx.backbone.encode_images(query.images), dim=-1)
    assert (image - frozen).abs().max() > 1e-3


def test_training_moves_every_prompt(ctx):
    untrained, trained = fit(ctx, epochs=0), fit(ctx, epochs=2)
    for (name, a), (_, b) in zip(
        untrained.prompts.named_parameters(), trained.prompts.named_parameters(), strict=True
    ):
        assert (a - b).abs().max() > 0, name


def test_a_resnet_backbone_is_refused_with_a_clear_error():
    logging.disable(logging.WARNING)
    try:
        torch.manual_seed(0)
        model = open_clip.create_model("RN50", pretrained=None)
    finally:
        logging.disable(logging.NOTSET)
    toy = load_backbone("toy")
    backbone = Backbone(BackboneSpec.parse("RN50:openai"), model, toy.preprocess, toy.tokenizer)
    empty = FeatureSet(torch.zeros(0, 1024), torch.zeros(0, dtype=torch.long), ())
    ctx = FitContext(
        classnames=["a", "b"],
        template="{}",
        templates=[],
        backbone=backbone,
        train=empty,
        train_views=None,
        val=empty,
        train_images=None,  # type: ignore[arg-type]
        val_images=None,  # type: ignore[arg-type]
        shots=1,
        seed=1,
        generator=torch.Generator().manual_seed(1),
    )
    with pytest.raises(UnsupportedVisionTowerError, match=r"RN50:openai.*ModifiedResNet.*ViT"):
        IVLP().fit(ctx)


# ------------------------------------------------------------------------------------------
# Learning on the toy world, through the real runner


def test_ivlp_beats_zeroshot_on_base_classes(tmp_path, feature_cache):
    # 5 epochs instead of the config's 20 keep this run at ~10 s on a CPU; the full config
    # is the slow test below.
    ivlp, zeroshot = base2novel(tmp_path, feature_cache, "ivlp", (("epochs", "5"),))
    assert ivlp["base"] > zeroshot["base"] + 5, (ivlp, zeroshot)


@pytest.mark.slow
def test_ivlp_full_config_beats_zeroshot_on_base_classes(tmp_path, feature_cache):
    ivlp, zeroshot = base2novel(tmp_path, feature_cache, "ivlp", ())
    assert ivlp["base"] > zeroshot["base"] + 5, (ivlp, zeroshot)
