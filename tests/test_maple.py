"""MaPLe: presets, initialisation, couplings, CoOp equivalence at depth 1, learning."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.methods.base import FitContext, Needs, QueryBatch
from fewshot.methods.maple import MaPLe, MaPLeConfig
from fewshot.prompting import (
    build_class_prompts,
    embed_tokens,
    encode_class_prompts,
    encode_images_prompted,
    text_tower,
)
from fewshot.testing import make_fit_context, make_query_batch
from fewshot.types import ConfigError, FewshotError

from ._runs import base2novel

TOY_LAYERS, TOY_WIDTH = 3, 128  # both towers of the toy backbone
NAMES = ["red circle", "green square", "a shape never seen"]


@pytest.fixture(scope="module")
def ctx() -> FitContext:
    return make_fit_context("toy", "toy-objects", classes=(0, 1, 2), shots=2, aug_views=0)


@pytest.fixture(scope="module")
def query() -> QueryBatch:
    return make_query_batch("toy", "toy-objects", classes=(0, 1, 2), needs=Needs.IMAGES)


def fit(ctx: FitContext, protocol: str = "base2novel", **overrides: object) -> MaPLe:
    adapter = MaPLe(MaPLeConfig.build(protocol, 16, overrides))
    ctx.generator.manual_seed(ctx.seed)
    adapter.fit(ctx)
    return adapter


def test_presets_follow_the_published_configs():
    # configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml (base2novel; fewshot is "our config")
    for protocol in ("base2novel", "fewshot"):
        cfg = MaPLeConfig.build(protocol, 4)
        assert (cfg.n_ctx, cfg.depth, cfg.lr, cfg.epochs, cfg.batch_size) == (2, 9, 0.0035, 5, 4)
        assert cfg.ctx_init == "a photo of a"
    # ..._cross_datasets.yaml
    for protocol in ("cross-dataset", "domain-generalization"):
        cfg = MaPLeConfig.build(protocol, 16)
        assert (cfg.n_ctx, cfg.depth, cfg.lr, cfg.epochs, cfg.batch_size) == (2, 3, 0.0026, 2, 4)
    with pytest.raises(ConfigError, match="depth >= 1"):
        MaPLeConfig(depth=0)


def test_context_is_the_first_two_tokens_and_the_prompt_keeps_of_a(ctx):
    adapter = fit(ctx, epochs=0)
    tokens = ctx.backbone.tokenize(["a photo of a"])
    words = embed_tokens(ctx.backbone.model, tokens)[0, 1:3]  # "a", "photo"
    assert torch.equal(adapter.prompts.ctx.detach(), words.float())
    prompts = adapter.prompts_for(NAMES)
    assert torch.equal(prompts.tokens, ctx.backbone.tokenize([f"a photo of a {n}." for n in NAMES]))
    # Untrained, with no deep prompts, the text side is CLIP on "a photo of a {class}.".
    shallow = fit(ctx, depth=1, epochs=0)
    expected = ctx.backbone.encode_texts([f"a photo of a {n}." for n in NAMES])
    assert torch.allclose(shallow.text_features(NAMES), expected, atol=1e-5, rtol=0)


def test_prompts_longer_than_the_context_are_an_error(ctx):
    adapter = fit(ctx, epochs=0)
    # SOS + "a photo of a" (4 tokens, 2 of them learned) + name + "." + EOT; "word" is one token.
    fits = " ".join(["word"] * (ctx.backbone.context_length - 7))
    assert adapter.text_features([fits]).shape[0] == 1
    with pytest.raises(FewshotError, match="exceed the text context length"):
        adapter.text_features([f"{fits} word"])


def test_deeper_couplings_start_identical_and_train_apart(ctx):
    untrained = fit(ctx, epochs=0)
    couplings = untrained.prompts.couplings
    assert len(couplings) == TOY_LAYERS - 1  # depth 9 capped at the toy's 3 blocks
    for layer in couplings[1:]:
        assert torch.equal(layer.weight, couplings[0].weight) and torch.equal(layer.bias, couplings[0].bias)
    assert not torch.equal(untrained.prompts.proj.weight, couplings[0].weight)
    trained = fit(ctx, epochs=2)
    first, second = trained.prompts.couplings
    assert not torch.equal(first.weight, second.weight)  # separate parameters, not one shared layer


def test_counts_prompts_and_couplings_only(ctx):
    adapter = fit(ctx, epochs=0)
    linear = TOY_WIDTH * TOY_WIDTH + TOY_WIDTH  # W_text -> W_vision with bias
    expected = 2 * TOY_WIDTH + (TOY_LAYERS - 1) * 2 * TOY_WIDTH + TOY_LAYERS * linear
    assert adapter.trainable_parameters() == expected


def test_deep_text_prompts_start_small_and_random(ctx):
    adapter = fit(ctx, epochs=0)
    deep = torch.stack(list(adapter.prompts.deep_text))
    assert deep.shape == (TOY_LAYERS - 1, 2, TOY_WIDTH)
    assert 0.015 < deep.std().item() < 0.025 and abs(deep.mean().item()) < 0.005


def test_depth_one_equals_coop_with_the_same_two_token_context(ctx, query):
    """Shallow MaPLe's text side is CoOp with its context: prompt "a photo of a {class}.",
    the first two positions after SOS learned. Its image side is one prompt, proj(ctx)."""
    adapter = fit(ctx, depth=1, epochs=2)
    tower = text_tower(ctx.backbone.model)
    coop_prompts = build_class_prompts(ctx.backbone, tower, NAMES, 2, "a photo of a", "end")
    context = adapter.prompts.ctx.detach()
    with torch.no_grad():
        coop_text = F.normalize(encode_class_prompts(tower, coop_prompts, context), dim=-1)
        image = encode_images_prompted(ctx.backbone.model, query.images, [adapter.prompts.proj(context)])
        logits = adapter.predict(QueryBatch(classnames=NAMES, template="", images=query.images))
    assert torch.allclose(adapter.text_features(NAMES), coop_text, atol=1e-5, rtol=0)
    expected = ctx.backbone.logit_scale * F.normalize(image, dim=-1) @ coop_text.t()
    assert torch.allclose(logits, expected, atol=1e-3, rtol=0)
    # With the deep prompts of depth 9 the text side is no longer CoOp's.
    deep = fit(ctx, epochs=0)
    assert (deep.text_features(NAMES) - coop_text).abs().max() > 1e-3


def test_vision_prompts_are_the_coupled_text_prompts(ctx):
    adapter = fit(ctx, epochs=1)
    p = adapter.prompts
    vision = p.vision()
    assert torch.equal(vision[0], p.proj(p.ctx))
    for j, (coupling, text) in enumerate(zip(p.couplings, p.deep_text, strict=True), start=1):
        assert torch.equal(vision[j], text @ coupling.weight.t() + coupling.bias)


def test_maple_beats_zeroshot_on_base_classes(tmp_path, feature_cache):
    maple, zeroshot = base2novel(tmp_path, feature_cache, "maple", ())  # the full config: 5 epochs
    assert maple["base"] > zeroshot["base"] + 5, (maple, zeroshot)
