"""SgVA-CLIP: the adapter, the pre-projection map, the KD term, episodes, presets, learning."""

from __future__ import annotations

import copy
import dataclasses
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from fewshot.methods._sgva import (
    VisualAdapter,
    VisualProjection,
    ensemble_context,
    prototypes,
    soft_cross_entropy,
)
from fewshot.methods.base import QueryBatch
from fewshot.methods.sgva import SgVA, SgVAConfig, episodes, sgva_learning_rates
from fewshot.prompting import text_tower
from fewshot.sweeps import sweep
from fewshot.testing import make_fit_context, make_query_batch
from fewshot.types import ConfigError, RunSpec

CLASSES = (0, 1, 2, 3)


@pytest.fixture(scope="module")
def backbone():
    from fewshot.backbones import load_backbone

    return load_backbone("toy")


@pytest.fixture(scope="module")
def colors(backbone):
    """toy-colors, 4 classes, 4 shots, 3 cached views."""
    return make_fit_context(backbone, "toy-colors", classes=CLASSES, shots=4, aug_views=3)


def fit(config, context, seed=None):
    context = dataclasses.replace(context, generator=torch.Generator().manual_seed(seed or context.seed))
    adapter = SgVA(config)
    adapter.fit(context)
    return adapter


def test_zeroed_adapter_with_alpha_zero_is_its_frozen_branch():
    adapter = VisualAdapter(16, 32, alpha=0.5, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapter.linear1.weight.zero_()
        adapter.linear2.weight.zero_()
        adapter.alpha.fill_(0.0)
    x = torch.randn(5, 16, generator=torch.Generator().manual_seed(1))
    relu = torch.where(x > 0, x, torch.zeros_like(x))
    expected = relu / relu.pow(2).sum(-1, keepdim=True).sqrt()
    assert torch.allclose(adapter(x), expected, atol=1e-6)


def test_adapter_is_the_residual_mix_of_its_two_bias_free_layers():
    adapter = VisualAdapter(8, 16, alpha=0.3, generator=torch.Generator().manual_seed(0))
    assert adapter.linear1.bias is None and adapter.linear2.bias is None
    assert adapter.alpha.requires_grad and adapter.alpha.item() == pytest.approx(0.3)
    x = torch.randn(4, 8, generator=torch.Generator().manual_seed(2))
    w1, w2 = adapter.linear1.weight.detach(), adapter.linear2.weight.detach()
    hidden = (x @ w1.t()).clamp(min=0) @ w2.t()
    mixed = (0.3 * hidden + 0.7 * x).clamp(min=0)
    assert torch.allclose(adapter(x), mixed / mixed.norm(dim=-1, keepdim=True), atol=1e-6)
    again = VisualAdapter(8, 16, alpha=0.3, generator=torch.Generator().manual_seed(0))
    assert torch.equal(again.linear1.weight, adapter.linear1.weight)  # drawn from the generator


def test_vit_pseudo_inverse_recovers_the_pre_projection_feature(backbone, colors):
    """The toy ViT's pooled token before ``proj`` (read with a hook) is what to_pre returns."""
    model = backbone.model
    seen = {}
    handle = model.visual.ln_post.register_forward_hook(lambda m, i, out: seen.setdefault("x", out))
    images = torch.stack([backbone.preprocess(img) for img in colors.train_images.images[:6]])
    with torch.no_grad():
        features = model.encode_image(images)
    handle.remove()
    pooled = seen["x"][:, 0]
    projection = VisualProjection.of(model)
    assert projection.width == model.visual.proj.shape[0]
    assert torch.allclose(projection.to_pre(features), pooled, atol=1e-3)
    assert torch.allclose(projection.to_joint(projection.to_pre(features)), features, atol=1e-4)


def _resnet(output_dim: int):
    from open_clip.modified_resnet import ModifiedResNet

    torch.manual_seed(0)
    visual = ModifiedResNet(
        layers=[1, 1, 1, 1], output_dim=output_dim, heads=2, image_size=64, width=8
    ).eval()
    return torch.nn.Module(), visual


def test_resnet_pseudo_inverse_subtracts_the_attention_pool_bias_first():
    """Square c_proj: to_pre must give the attention pool's output before c_proj, computed
    here by a copy of the tower whose c_proj is the identity."""
    model, visual = _resnet(output_dim=256)  # embed width 8 * 32 = 256
    model.visual = visual
    with torch.no_grad():
        visual.attnpool.c_proj.bias.normal_(0.0, 0.5)
        bare = copy.deepcopy(visual)
        bare.attnpool.c_proj.weight.copy_(torch.eye(256))
        bare.attnpool.c_proj.bias.zero_()
        images = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(3))
        features, hidden = visual(images), bare(images)
    projection = VisualProjection.of(model)
    assert projection.width == 256
    assert torch.allclose(projection.to_pre(features), hidden, atol=1e-3, rtol=1e-3)


def test_resnet_round_trip_recovers_the_joint_feature():
    """RN50-like: the projection narrows (embed 256 -> 32); back and forth gives f again."""
    model, visual = _resnet(output_dim=32)
    model.visual = visual
    with torch.no_grad():
        visual.attnpool.c_proj.bias.normal_(0.0, 0.5)
        features = visual(torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(4)))
    projection = VisualProjection.of(model)
    hidden = projection.to_pre(features)
    assert hidden.shape == (3, 256)
    weight, bias = visual.attnpool.c_proj.weight, visual.attnpool.c_proj.bias
    assert torch.allclose(hidden @ weight.t() + bias, features, atol=1e-4)


def test_kd_loss_is_the_soft_cross_entropy_at_temperature_five():
    gen = torch.Generator().manual_seed(5)
    student, teacher = torch.randn(6, 10, generator=gen) * 20, torch.randn(6, 10, generator=gen) * 20
    p = torch.exp(teacher / 5) / torch.exp(teacher / 5).sum(-1, keepdim=True)
    log_q = student / 5 - torch.log(torch.exp(student / 5).sum(-1, keepdim=True))
    expected = -(p * log_q).sum(-1).mean()
    assert soft_cross_entropy(student, teacher, 5.0).item() == pytest.approx(expected.item(), rel=1e-5)
    # = KL(p || q) + H(p): minimal (the teacher's entropy) when the student equals the teacher
    entropy = -(p * p.log()).sum(-1).mean()
    assert soft_cross_entropy(teacher, teacher, 5.0).item() == pytest.approx(entropy.item(), rel=1e-5)


def test_prototypes_are_unnormalised_class_means():
    features = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]])
    labels = torch.tensor([0, 0, 1])
    assert torch.allclose(prototypes(features, labels, 2), torch.tensor([[0.5, 0.5], [3.0, 3.0]]))


def test_episodes_draw_from_the_generator():
    first = list(episodes(12, 5, torch.Generator().manual_seed(7)))
    again = list(episodes(12, 5, torch.Generator().manual_seed(7)))
    other = list(episodes(12, 5, torch.Generator().manual_seed(8)))
    assert len(first) == 2 and all(len(e) == 5 and len(set(e.tolist())) == 5 for e in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(torch.equal(a, b) for a, b in zip(first, other, strict=True))
    assert len(list(episodes(4, 50, torch.Generator()))) == 1  # at least one


def test_two_fits_with_the_same_seed_agree_and_another_seed_differs(colors):
    config = SgVAConfig(epochs=4, train_way=2, adapter_lr=0.01, prompt_lr=0.05)
    a, b, c = fit(config, colors), fit(config, colors), fit(config, colors, seed=99)
    assert torch.equal(a.learner.ctx, b.learner.ctx)
    assert torch.equal(a.adapter.linear1.weight, b.adapter.linear1.weight)
    assert not torch.equal(a.adapter.linear2.weight, c.adapter.linear2.weight)


def test_online_augmentation_trains_from_two_fresh_passes(backbone):
    online = make_fit_context(backbone, "toy-colors", classes=(0, 1), shots=2, aug_views=0)
    adapter = fit(SgVAConfig(epochs=2, adapter_lr=0.05, prompt_lr=0.05), online)
    assert adapter.predict(make_query_batch(backbone, "toy-colors", classes=(0, 1))).shape == (4, 2)
    width = backbone.model.visual.proj.shape[0]
    assert adapter.trainable_parameters() == adapter.learner.ctx.numel() + 2 * 2 * width * width + 1 + 1


def test_prediction_fuses_prototypes_from_the_unaugmented_shots(backbone, colors):
    adapter = fit(SgVAConfig(epochs=3, train_way=2, adapter_lr=0.01, prompt_lr=0.05), colors)
    lam = adapter.selected()["lambda"]
    assert lam == pytest.approx(adapter.fusion, abs=1e-6) and lam != 0.5  # learned on val
    query = make_query_batch(backbone, "toy-colors", classes=CLASSES)
    names, scale = query.classnames, backbone.logit_scale
    proj = backbone.model.visual.proj.detach()
    with torch.no_grad():
        g_train = adapter.adapter(colors.train.features @ torch.linalg.pinv(proj))
        protos = torch.stack([g_train[colors.train.labels == c].mean(0) for c in range(len(names))])
        g = adapter.adapter(query.features @ torch.linalg.pinv(proj))
    text = adapter.text_features(names)
    prompt = scale * F.normalize(query.features, dim=-1) @ text.t()
    expected = adapter.fusion * scale * g @ protos.t() + (1 - adapter.fusion) * prompt
    assert torch.allclose(adapter.predict(query), expected, atol=1e-3)
    # Novel class names have no prototype: the prompt branch alone.
    novel = make_query_batch(backbone, "toy-colors", classes=(4, 5))
    novel_text = adapter.text_features(novel.classnames)
    expected_novel = scale * F.normalize(novel.features, dim=-1) @ novel_text.t()
    assert torch.allclose(adapter.predict(novel), expected_novel, atol=1e-4)
    fixed = fit(SgVAConfig(epochs=1, fusion=0.25), colors)
    assert fixed.selected() == {"lambda": 0.25}


def test_ensemble_init_averages_the_80_templates_token_embeddings(backbone):
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    templates = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    rows = []
    for template in templates:  # one at a time, through the model's own embedding table
        ids = backbone.tokenize([template])[0]
        rows.append(backbone.model.token_embedding.weight[ids[1:5]].detach())
    expected = torch.stack(rows).mean(0)
    got = ensemble_context(text_tower(backbone.model), backbone.tokenize(templates), 4)
    assert torch.allclose(got, expected, atol=1e-6)
    ctx = make_fit_context(backbone, "toy-colors", classes=(0, 1), shots=1, aug_views=1)
    adapter = fit(SgVAConfig(epochs=0, ctx_init="ensemble"), ctx)
    assert torch.allclose(adapter.learner.ctx, expected, atol=1e-6)


def test_presets_follow_the_official_learning_rates():
    assert SgVAConfig.build("fewshot", 16, dataset="imagenet").ctx_init == "ensemble"
    imagenet = SgVAConfig.build("fewshot", 16, dataset="imagenet")
    assert (imagenet.adapter_lr, imagenet.prompt_lr, imagenet.fusion) == (4e-2, 5e-2, 0.5)
    assert sgva_learning_rates(1, "caltech101") == (5e-4, 5e-5)
    assert sgva_learning_rates(1, "eurosat") == (7.5e-4, 5e-5)
    assert sgva_learning_rates(4, "flowers102") == (2e-3, 2e-3)
    assert sgva_learning_rates(8, "sun397") == (3e-3, 1.5e-3)
    assert sgva_learning_rates(16, "fgvc-aircraft") == (3.5e-3, 3.5e-3)  # its 5e-3 branch is dead code
    assert sgva_learning_rates(16, "dtd") == (3.5e-3, 3.5e-3)
    assert sgva_learning_rates(3, "dtd") == sgva_learning_rates(2, "dtd") == (1.5e-3, 2e-4)
    dtd = SgVAConfig.build("fewshot", 16, dataset="dtd")
    assert (dtd.ctx_init, dtd.n_ctx, dtd.epochs, dtd.train_way, dtd.fusion) == (
        "a photo of a",
        4,
        100,
        50,
        None,
    )
    assert (dtd.temperature, dtd.kd_weight, dtd.hidden_ratio, dtd.alpha, dtd.nesterov) == (
        5.0,
        1.0,
        2,
        0.5,
        True,
    )
    with pytest.raises(ConfigError, match="positive"):
        SgVAConfig(adapter_lr=0.0)


def test_16_shots_beats_zeroshot_on_toy_colors(tmp_path: Path, feature_cache) -> None:
    """The default preset (100 epochs) on toy-colors, seed 1: far above zero-shot."""
    specs = [RunSpec(m, "toy-colors", shots=16, seed=1) for m in ("zeroshot", "sgva-clip")]
    results = sweep(specs, results_dir=tmp_path, cache=feature_cache)
    assert all(r.ok for r in results), [r.error for r in results]
    acc = {r.spec.method: r.metrics["all"] for r in results}
    assert acc["sgva-clip"] > acc["zeroshot"] + 20, acc
    assert statistics.fmean(acc.values()) <= 100


class _Recorder:
    """An optimiser stand-in that keeps the gradients of one step and changes nothing."""

    def __init__(self, params):
        self.params, self.grads = list(params), []

    def zero_grad(self, set_to_none=True):
        for p in self.params:
            p.grad = None

    def step(self):
        self.grads = [p.grad.clone() for p in self.params]


def test_adapter_step_is_prototype_ce_plus_kd_through_the_projection(backbone, colors):
    """One adapter step's gradients equal those of L_v + L_kd written out here: prototypes
    over the episode's classes, the student s · (g · P) · Tᵀ not renormalised, τ = 5."""
    sgva = fit(SgVAConfig(epochs=0), colors)
    n, scale = len(colors.train), backbone.logit_scale
    views = colors.train_views
    support = (views.features[:n], views.labels[:n])
    chosen = torch.tensor([2, 0])
    keep = torch.isin(views.labels[n : 2 * n], chosen)
    q_features, q_labels = views.features[n : 2 * n][keep], views.labels[n : 2 * n][keep]
    text = sgva.text_features(colors.classnames)
    teacher = scale * F.normalize(q_features, dim=-1) @ text.t()
    recorder = _Recorder(sgva.adapter.parameters())
    sgva._adapter_step(colors, support, chosen, text, teacher, q_features, q_labels, recorder)

    proj = backbone.model.visual.proj.detach()
    w1, w2 = (
        sgva.adapter.linear1.weight.detach().clone().requires_grad_(),
        sgva.adapter.linear2.weight.detach().clone().requires_grad_(),
    )
    alpha = sgva.adapter.alpha.detach().clone().requires_grad_()

    def adapt(f):
        x = f @ torch.linalg.pinv(proj)
        mixed = torch.relu(alpha * (torch.relu(x @ w1.t()) @ w2.t()) + (1 - alpha) * x)
        return mixed / mixed.norm(dim=-1, keepdim=True)

    s_keep = torch.isin(support[1], chosen)
    g_support, g_query = adapt(support[0][s_keep]), adapt(q_features)
    s_labels = support[1][s_keep]
    protos = torch.stack([g_support[s_labels == c].mean(0) for c in chosen.tolist()])
    local = torch.tensor([chosen.tolist().index(c) for c in q_labels.tolist()])
    loss_v = F.cross_entropy(scale * g_query @ protos.t(), local)
    student = scale * (g_query @ proj) @ text.t()
    target = torch.softmax(teacher / 5, dim=-1)
    loss_kd = -(target * torch.log_softmax(student / 5, dim=-1)).sum(-1).mean()
    (loss_v + loss_kd).backward()
    names = [name for name, _ in sgva.adapter.named_parameters()]
    expected = {"linear1.weight": w1.grad, "linear2.weight": w2.grad, "alpha": alpha.grad}
    for name, got in zip(names, recorder.grads, strict=True):
        assert torch.allclose(got, expected[name], atol=1e-5, rtol=1e-3), name
    assert alpha.grad.abs().item() > 0


def test_untrained_with_fusion_zero_is_zero_shot_with_the_init_prompt(backbone, colors):
    """λ = 0 and no training: the fused classifier is its frozen branch, CLIP with the
    prompt "a photo of a {class}." (computed here with the backbone alone)."""
    adapter = fit(SgVAConfig(epochs=0, fusion=0.0), colors)
    features = colors.val.features
    query = QueryBatch(classnames=colors.classnames, template=colors.template, features=features)
    text = backbone.encode_texts([f"a photo of a {name}." for name in colors.classnames], normalize=True)
    expected = backbone.logit_scale * F.normalize(features.float(), dim=-1) @ text.float().t()
    assert torch.allclose(adapter.predict(query), expected, atol=1e-4)
