"""CoCoOp: the meta-net's per-image shift, equivalence with CoOp, costs, and learning on the toy world."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fewshot.methods import cocoop as cocoop_module
from fewshot.methods.base import QueryBatch
from fewshot.methods.cocoop import CoCoOp, CoCoOpConfig
from fewshot.methods.coop import CoOp, CoOpConfig
from fewshot.prompting import assemble_prompts
from fewshot.sweeps import sweep
from fewshot.testing import make_fit_context, make_query_batch
from fewshot.types import PROTOCOLS, ConfigError, RunSpec

DATASET = "toy-objects"
TRAIN = (0, 1, 2)
NOVEL = (6, 7)


@pytest.fixture(scope="module")
def backbone():
    from fewshot.backbones import load_backbone

    return load_backbone("toy")


@pytest.fixture(scope="module")
def query(backbone) -> QueryBatch:
    return make_query_batch(backbone, DATASET, classes=TRAIN, per_class=2)


@pytest.fixture(scope="module")
def novel_query(backbone) -> QueryBatch:
    return make_query_batch(backbone, DATASET, classes=NOVEL, per_class=2)


def fit_cocoop(backbone, *, shots: int = 2, aug_views: int = 1, **overrides) -> CoCoOp:
    adapter = CoCoOp(CoCoOpConfig.build(overrides=overrides))
    adapter.fit(make_fit_context(backbone, DATASET, classes=TRAIN, shots=shots, aug_views=aug_views))
    return adapter


def test_zeroed_meta_net_gives_coops_logits(backbone, query, novel_query):
    """With the meta-net's last layer zero, every image's context is the plain context, so
    CoCoOp must give CoOp's logits for the same context, on training and on new classes."""
    context = make_fit_context(backbone, DATASET, classes=TRAIN, shots=2, aug_views=1)
    coop = CoOp(CoOpConfig(n_ctx=4, ctx_init="a photo of a", epochs=0))
    coop.fit(context)
    cocoop = CoCoOp(CoCoOpConfig(epochs=0))
    cocoop.fit(context)
    shared = torch.randn(4, coop.learner.ctx.shape[1], generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        coop.learner.ctx.copy_(shared)
        cocoop.learner.ctx.copy_(shared)
    coop._text.clear()  # the context changed: drop CoOp's cached text features

    shifted = cocoop.predict(query)
    assert not torch.allclose(shifted, coop.predict(query), atol=1e-3)  # the shift does act

    last = cocoop.learner.meta_net[2]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.zero_()
    for batch in (query, novel_query):
        expected = coop.predict(batch)
        assert torch.allclose(cocoop.predict(batch), expected, atol=1e-5, rtol=0)


def test_meta_net_shift_is_per_image_and_shared_by_context_tokens(backbone, query):
    adapter = fit_cocoop(backbone, epochs=0)
    learner = adapter.learner
    dim, width = backbone.embed_dim, learner.ctx.shape[1]
    first, second = learner.meta_net[0], learner.meta_net[2]
    assert tuple(first.weight.shape) == (dim // 16, dim) and first.bias is not None
    assert tuple(second.weight.shape) == (width, dim // 16) and second.bias is not None

    features = query.features[[0, 3]]  # two images of different classes
    image = F.normalize(features, dim=-1)
    with torch.no_grad():
        contexts = learner.contexts(image)  # (2, M, W)
        shift = contexts - learner.ctx
        # By hand: Linear -> ReLU -> Linear on the normalised feature.
        hidden = torch.relu(image @ first.weight.t() + first.bias)
        expected = hidden @ second.weight.t() + second.bias
    assert torch.allclose(shift, expected.unsqueeze(1).expand_as(shift), atol=1e-6)  # same for all M tokens
    assert not torch.allclose(shift[0], shift[1], atol=1e-4)  # one shift per image

    names = query.classnames
    prompts = adapter.prompts_for(names)
    with torch.no_grad():
        embeddings = assemble_prompts(prompts, learner.class_contexts(image, len(names)))  # (2, C, L, W)
    for b in range(2):
        for c in range(len(names)):  # "end" layout: positions 1..M hold this image's context
            assert torch.equal(embeddings[b, c, 1:5], contexts[b])

    text = adapter.text_features(features, names)  # (2, C, D)
    assert text.shape == (2, len(names), backbone.embed_dim)
    assert (text[0] - text[1]).abs().max() > 1e-4  # different images, different class texts
    # The meta-net reads the normalised feature: scaling an image's feature changes nothing.
    assert torch.allclose(
        adapter.predict(QueryBatch(names, "{}", features=3 * features)),
        adapter.predict(QueryBatch(names, "{}", features=features)),
        atol=1e-4,
    )


def test_batched_prediction_equals_the_per_image_loop_and_chunks_are_bounded(backbone, query, monkeypatch):
    adapter = fit_cocoop(backbone, epochs=1, predict_chunk=7)
    # Names of different token lengths: each sequence must keep its own end-of-text position.
    names, n = ["red circle", "blue square with thin stripes", "green"], len(query.features)
    query = QueryBatch(names, "{}", features=query.features)  # 3 classes: 7 // 3 = 2 images per call
    one_by_one = torch.cat(
        [adapter.predict(QueryBatch(names, "{}", features=query.features[i : i + 1])) for i in range(n)]
    )

    calls: list[int] = []
    encode = cocoop_module.encode_class_prompts

    def spy(tower, prompts, ctx, **kwargs):
        calls.append(ctx.shape[0] * ctx.shape[1])  # (images, classes, M, W): prompt sequences
        return encode(tower, prompts, ctx, **kwargs)

    monkeypatch.setattr(cocoop_module, "encode_class_prompts", spy)
    batched = adapter.predict(query)
    assert torch.allclose(batched, one_by_one, atol=1e-5)
    assert calls == [6] * (n // 2) + ([3] if n % 2 else [])  # at most 7 sequences per call
    assert len(calls) == math.ceil(n / 2)


def test_costs_count_every_prompt_sequence_encoded(backbone, query, novel_query):
    epochs, shots = 2, 2
    adapter = fit_cocoop(backbone, epochs=epochs, shots=shots, aug_views=1)
    support = shots * len(TRAIN)
    fit_count = epochs * support * len(TRAIN)  # batch 1: C prompts per image per step
    assert adapter.extra_costs() == {"text_prompts_encoded": fit_count, "text_prompts_encoded_fit": fit_count}
    adapter.predict(query)
    adapter.predict(novel_query)
    predicted = len(query.features) * len(TRAIN) + len(novel_query.features) * len(NOVEL)
    assert adapter.extra_costs()["text_prompts_encoded"] == fit_count + predicted
    assert adapter.extra_costs()["text_prompts_encoded_fit"] == fit_count


def test_trains_context_and_meta_net_and_counts_both(backbone):
    untrained = fit_cocoop(backbone, epochs=0)
    trained = fit_cocoop(backbone, epochs=1)
    before, after = dict(untrained.learner.named_parameters()), dict(trained.learner.named_parameters())
    assert set(before) == {
        "ctx",
        "meta_net.0.weight",
        "meta_net.0.bias",
        "meta_net.2.weight",
        "meta_net.2.bias",
    }
    for name in before:  # same seed, same initial values: every parameter moved in training
        assert not torch.equal(before[name], after[name]), name
    dim, width, hidden = backbone.embed_dim, trained.learner.ctx.shape[1], backbone.embed_dim // 16
    assert trained.trainable_parameters() == 4 * width + (dim * hidden + hidden) + (hidden * width + width)
    assert not any(p.requires_grad for p in backbone.model.parameters())


def test_one_published_config_for_every_protocol():
    for protocol in PROTOCOLS:
        for shots in (1, 16):
            cfg = CoCoOpConfig.build(protocol, shots)
            assert (cfg.n_ctx, cfg.ctx_init, cfg.epochs, cfg.batch_size, cfg.lr) == (
                4,
                "a photo of a",
                10,
                1,
                0.002,
            )
            assert (cfg.warmup_epochs, cfg.warmup_lr, cfg.weight_decay, cfg.momentum) == (1, 1e-5, 5e-4, 0.9)
    assert CoCoOpConfig.build(overrides={"predict_chunk": "64"}).predict_chunk == 64
    with pytest.raises(ConfigError, match="predict_chunk"):
        CoCoOpConfig(predict_chunk=0)
    with pytest.raises(ConfigError, match="lr"):
        CoCoOpConfig(lr=0)


def test_16_shots_base2novel_beats_zeroshot_on_base(tmp_path: Path, feature_cache) -> None:
    """The full published config (10 epochs, batch 1) on toy-objects' base classes, seeds 1-3."""
    seeds = (1, 2, 3)
    specs = [
        RunSpec(m, DATASET, shots=16, seed=s, protocol="base2novel")
        for m in ("zeroshot", "cocoop")
        for s in seeds
    ]
    results = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert all(r.ok for r in results), [r.error for r in results]
    by_method = {m: [r for r in results if r.spec.method == m] for m in ("zeroshot", "cocoop")}
    for result in by_method["cocoop"]:
        assert result.metrics["base"] is not None and result.metrics["novel"] is not None
    zeroshot = statistics.mean(r.metrics["base"] for r in by_method["zeroshot"])
    cocoop = statistics.mean(r.metrics["base"] for r in by_method["cocoop"])
    assert cocoop > zeroshot, (cocoop, zeroshot)

    # The record shows the batch x classes cost: every support image of every epoch encodes
    # the prompts of all base classes, and so does every base (novel) test image.
    from fewshot.datasets import get_dataset

    data = get_dataset(DATASET)
    labels = sorted(set(data.splits().test.labels))
    base = set(labels[: math.ceil(len(labels) / 2)])
    test_base = sum(1 for item in data.splits().test.items if item.label in base)
    test_novel = len(data.splits().test) - test_base
    n_base, n_novel = len(base), len(labels) - len(base)
    fit = 10 * 16 * n_base * n_base
    record = json.loads(by_method["cocoop"][0].spec.record_path(tmp_path).read_text())
    assert record["costs"]["text_prompts_encoded_fit"] == fit
    assert record["costs"]["text_prompts_encoded"] == fit + test_base * n_base + test_novel * n_novel
