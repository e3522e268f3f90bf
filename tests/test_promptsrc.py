"""PromptSRC: templates, teachers, losses, Gaussian prompt aggregation, learning."""

from __future__ import annotations

import math
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

from fewshot.methods.base import FitContext
from fewshot.methods.promptsrc import (
    PromptSRC,
    PromptSRCConfig,
    gpa_weights,
    promptsrc_templates,
    self_consistency_terms,
)
from fewshot.testing import make_fit_context
from fewshot.types import ConfigError

from ._runs import base2novel


@pytest.fixture(scope="module")
def ctx() -> FitContext:
    return make_fit_context("toy", "toy-objects", classes=(0, 1, 2), shots=2, aug_views=0)


def fit(ctx: FitContext, protocol: str = "base2novel", **overrides: object) -> PromptSRC:
    adapter = PromptSRC(PromptSRCConfig.build(protocol, 16, overrides))
    ctx.generator.manual_seed(ctx.seed)
    adapter.fit(ctx)
    return adapter


def gaussian(x: float, mu: float, sigma: float) -> float:
    """The density trainers/promptsrc.py evaluates (its ``get_gauss``)."""
    return 1.0 / (sigma * math.sqrt(2.0 * math.pi)) * math.exp(-0.5 * ((x - mu) / sigma) ** 2)


def test_the_60_templates_are_openais_first_60_with_a_photo_of_a_first():
    templates = promptsrc_templates()
    openai = [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]
    assert len(templates) == 60 and len(set(templates)) == 60
    assert templates[0] == "a photo of a {}."
    assert set(templates) == set(openai[:60])
    assert templates[1:4] == ["a bad photo of a {}.", "a photo of many {}.", "a sculpture of a {}."]
    assert templates[-1] == "itap of the {}."


def test_presets_follow_the_published_configs():
    b2n = PromptSRCConfig.build("base2novel", 16)
    assert (b2n.depth_text, b2n.depth_vision, b2n.n_ctx_text, b2n.n_ctx_vision) == (9, 9, 4, 4)
    assert (b2n.lr, b2n.epochs, b2n.batch_size, b2n.gpa_mean, b2n.gpa_std) == (0.0025, 20, 4, 15, 1)
    assert (b2n.text_weight, b2n.image_weight) == (25, 10)
    few = PromptSRCConfig.build("fewshot", 4, dataset="dtd")
    assert (few.depth_text, few.depth_vision, few.epochs, few.gpa_mean, few.gpa_std) == (9, 9, 50, 45, 5)
    for protocol in ("cross-dataset", "domain-generalization"):
        xd = PromptSRCConfig.build(protocol, 16)
        assert (xd.depth_text, xd.depth_vision, xd.epochs, xd.gpa_mean, xd.gpa_std) == (3, 3, 20, 6, 10)
    with pytest.raises(ConfigError, match="gpa_std"):
        PromptSRCConfig(gpa_std=0)


def test_fewshot_gpa_comes_from_the_dataset_table():
    def gpa(dataset: str, protocol: str = "fewshot", **overrides: object) -> tuple[float, float]:
        config = PromptSRCConfig.build(protocol, 16, overrides, dataset=dataset)
        return config.gpa_mean, config.gpa_std

    # The few-shot config's comments: 30/30 for these ...
    for name in ("imagenet", "caltech-101", "oxford_pets", "food-101", "ucf101", "sun397"):
        assert gpa(name) == (30, 30), name
    # ... and 45/5 for these.
    for name in ("stanford_cars", "oxford_flowers", "fgvc_aircraft", "dtd", "eurosat"):
        assert gpa(name) == (45, 5), name
    assert gpa("toy-objects") == (30, 30)  # the value the config file leaves active
    assert gpa("dtd", gpa_mean=7) == (7, 5)  # an override wins over the preset
    assert gpa("dtd", "base2novel") == (15, 1)  # base-to-novel has one GPA for every dataset


def test_fit_uses_the_configs_gpa_and_never_changes_the_config(ctx):
    config = PromptSRCConfig.build("fewshot", 2, {"epochs": 3}, dataset="dtd")
    adapter = PromptSRC(config)
    ctx.generator.manual_seed(ctx.seed)
    adapter.fit(ctx)
    assert adapter.config is config
    assert adapter._weights == gpa_weights(3, 45.0, 5.0)


@pytest.mark.parametrize(("epochs", "mu", "sigma"), [(20, 15, 1), (50, 30, 30), (50, 45, 5), (20, 6, 10)])
def test_gpa_weights_are_the_normalised_gaussian(epochs, mu, sigma):
    raw = [gaussian(e, mu, sigma) for e in range(1, epochs + 1)]
    expected = [w / sum(raw) for w in raw]
    got = gpa_weights(epochs, mu, sigma)
    assert len(got) == epochs and math.isclose(sum(got), 1.0)
    assert all(math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15) for a, b in zip(got, expected, strict=True))


def test_gpa_weights_do_not_underflow_far_from_the_mean():
    assert gpa_weights(2, 60, 1) == pytest.approx([0.0, 1.0])  # the raw densities are all 0.0


def test_aggregated_prompts_are_the_weighted_mean_of_the_epochs(ctx):
    """Snapshot the prompts after every epoch through the progress hook, then compare."""
    snapshots: list[dict[str, torch.Tensor]] = []
    adapter = PromptSRC(PromptSRCConfig.build("base2novel", 16, {"epochs": 4, "gpa_mean": 2, "gpa_std": 1}))

    def progress(n: int, _description: str) -> Iterator[int]:
        for epoch in range(n):
            if epoch > 0:  # epoch - 1 has finished
                snapshots.append({k: v.clone() for k, v in adapter.prompts.state_dict().items()})
            yield epoch
        snapshots.append({k: v.clone() for k, v in adapter.prompts.state_dict().items()})

    ctx.progress = progress
    try:
        ctx.generator.manual_seed(ctx.seed)
        adapter.fit(ctx)
    finally:
        ctx.progress = None
    assert len(snapshots) == 4
    raw = [gaussian(e, 2, 1) for e in (1, 2, 3, 4)]
    weights = [w / sum(raw) for w in raw]
    final = adapter.prompts.state_dict()
    for key, value in final.items():
        expected = sum(w * snap[key].double() for w, snap in zip(weights, snapshots, strict=True))
        assert torch.allclose(value.double(), expected, atol=1e-6, rtol=0), key
        assert (value - snapshots[-1][key]).abs().max() > 1e-6, key  # not just the last epoch


def test_kl_term_is_kl_of_the_teacher_from_the_student_over_numel():
    gen = torch.Generator().manual_seed(0)
    logits, teacher = 5 * torch.randn(4, 6, generator=gen), 5 * torch.randn(4, 6, generator=gen)
    text, teacher_text = torch.randn(6, 8, generator=gen), torch.randn(6, 8, generator=gen)
    image, teacher_image = torch.randn(4, 8, generator=gen), torch.randn(4, 8, generator=gen)
    terms = self_consistency_terms(logits, teacher, text, teacher_text, image, teacher_image)
    p, q = teacher.softmax(dim=1), logits.softmax(dim=1)
    expected_kl = (p * (p.log() - q.log())).sum() / 24
    reverse_kl = (q * (q.log() - p.log())).sum() / 24
    assert torch.allclose(terms["kl"], expected_kl, atol=1e-6)
    assert not torch.allclose(terms["kl"], reverse_kl, atol=1e-3)  # the direction is tested
    assert torch.allclose(terms["text_l1"], (text - teacher_text).abs().mean())
    assert torch.allclose(terms["image_l1"], (image - teacher_image).abs().mean())


def test_text_teacher_is_the_normalised_mean_of_unnormalised_features(ctx):
    adapter = fit(ctx, epochs=0)
    model, names = ctx.backbone.model, ctx.classnames
    tokens = ctx.backbone.tokenize([t.replace("{}", n) for t in promptsrc_templates() for n in names])
    with torch.no_grad():
        features = model.encode_text(tokens).view(60, len(names), -1)  # open_clip's own encoder
    expected = F.normalize(features.mean(dim=0), dim=-1)
    ensemble = F.normalize(F.normalize(features, dim=-1).mean(dim=0), dim=-1)  # the usual recipe
    assert torch.allclose(adapter._teacher_text, expected, atol=1e-5, rtol=0)
    assert (ensemble - expected).abs().max() > 1e-4  # the two recipes differ on this model


def test_loss_adds_the_weighted_regularisers_to_cross_entropy(ctx):
    """With zero weights and a student equal to the teacher, the loss is the teacher's CE."""
    adapter = fit(ctx, depth_text=1, depth_vision=0, epochs=0, text_weight=0, image_weight=0)
    images, labels = next(iter(ctx.train_images.loader(4, augment=False, shuffle=False)))
    prompts = adapter.prompts_for(ctx.classnames)
    with torch.no_grad():
        loss = adapter._loss(images, labels, prompts)
        student_text = F.normalize(adapter._encode_text(prompts), dim=-1)
        image = F.normalize(ctx.backbone.encode_images(images), dim=-1)
        logits = ctx.backbone.logit_scale * image @ student_text.t()
        teacher = ctx.backbone.logit_scale * image @ adapter._teacher_text.t()
        p, q = teacher.softmax(dim=1), logits.softmax(dim=1)
        kl = (p * (p.log() - q.log())).sum() / logits.numel()
        text_l1 = (student_text - adapter._teacher_text).abs().mean()
        weighted = fit(ctx, depth_text=1, depth_vision=0, epochs=0)._loss(images, labels, prompts)
    assert torch.allclose(loss, F.cross_entropy(logits, labels) + kl, atol=1e-5)
    # Image L1 is 0 (no vision prompts): the weighted loss adds only 25 x the text L1.
    assert torch.allclose(weighted, loss + 25 * text_l1, atol=1e-4)
    assert adapter.extra_costs() == {"teacher_image_encodings": 4.0}  # one batch of 4 images


def test_promptsrc_beats_zeroshot_on_base_classes(tmp_path, feature_cache):
    # 5 epochs instead of the config's 20 keep this run at ~10 s on a CPU (GPA mu 15, sigma 1
    # then weights the last epoch); the full config is the slow test below.
    promptsrc, zeroshot = base2novel(tmp_path, feature_cache, "promptsrc", (("epochs", "5"),))
    assert promptsrc["base"] > zeroshot["base"] + 5, (promptsrc, zeroshot)


@pytest.mark.slow
def test_promptsrc_full_config_beats_zeroshot_on_base_classes(tmp_path, feature_cache):
    promptsrc, zeroshot = base2novel(tmp_path, feature_cache, "promptsrc", ())
    assert promptsrc["base"] > zeroshot["base"] + 5, (promptsrc, zeroshot)
