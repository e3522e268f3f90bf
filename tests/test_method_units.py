"""Unit tests of the first methods: LR schedule, linear-probe C search, CoOp prompts, zero-shot."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fewshot.methods._training import make_sgd, make_warmup_cosine, train_batches
from fewshot.methods.base import FitContext, QueryBatch
from fewshot.methods.coop import CoOp, CoOpConfig
from fewshot.methods.linear_probe import COARSE_GRID, LinearProbe, LinearProbeConfig, search_c
from fewshot.methods.zeroshot import ZeroShot, ZeroShotConfig
from fewshot.prompting import assemble_prompts
from fewshot.types import ConfigError, FeatureSet, FewshotError

NAMES = ["red circle", "blue square", "green striped triangle"]


@pytest.fixture(scope="module")
def backbone():
    from fewshot.backbones import load_backbone

    return load_backbone("toy")


def feature_context(backbone, classnames, features, labels, *, val=None, views=None, seed=1) -> FitContext:
    """A FitContext from given features (no images): enough for FEATURES methods."""
    ids = tuple(f"img{i}.png" for i in range(len(labels)))
    train = FeatureSet(features, labels, ids)
    return FitContext(
        classnames=list(classnames),
        template="a photo of a {}.",
        templates=[],
        backbone=backbone,
        train=train,
        train_views=views,
        val=val if val is not None else train,
        train_images=None,  # type: ignore[arg-type]
        val_images=None,  # type: ignore[arg-type]
        shots=int(len(labels) // len(classnames)),
        seed=seed,
        generator=torch.Generator().manual_seed(seed),
    )


# ------------------------------------------------------------------------------------------
# LR schedule (Dassl cosine + constant warm-up)


def lr_sequence(epochs: int, warmup_epochs: int, lr: float = 0.002, warmup_lr: float = 1e-5) -> list[float]:
    param = torch.nn.Parameter(torch.zeros(1))
    optimizer = make_sgd([param], lr)
    scheduler = make_warmup_cosine(optimizer, epochs, warmup_epochs=warmup_epochs, warmup_lr=warmup_lr)
    seen = []
    for _ in range(epochs):
        seen.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return seen


def test_lr_schedule_constant_warmup_then_cosine_over_all_epochs():
    # By hand: epoch 0 at 1e-5; epoch e >= 1 at 0.001 * (1 + cos(pi * (e - 1) / 5)), with
    # cos(pi/5) = 0.809017, cos(2pi/5) = 0.309017, cos(3pi/5) = -0.309017.
    expected = [1e-5, 0.002, 0.001809017, 0.001309017, 0.000690983]
    assert lr_sequence(5, 1) == pytest.approx(expected, rel=1e-6)


def test_lr_schedule_two_warmup_epochs_and_no_warmup():
    assert lr_sequence(4, 2) == pytest.approx([1e-5, 1e-5, 0.002, 0.001707107], rel=1e-6)  # cos(pi/4)
    assert lr_sequence(4, 0) == pytest.approx([0.002, 0.001707107, 0.001, 0.000292893], rel=1e-6)


def test_sgd_uses_dassl_defaults():
    group = make_sgd([torch.nn.Parameter(torch.zeros(1))], 0.002).param_groups[0]
    assert (group["momentum"], group["weight_decay"], group["dampening"], group["nesterov"]) == (
        0.9,
        5e-4,
        0,
        False,
    )


def test_train_batches_one_view_per_epoch_and_dassl_drop_last(backbone):
    n, views = 10, 3
    base = torch.arange(n, dtype=torch.float32)
    # View v of item i has feature value 100 * v + i: a batch reveals which view it came from.
    feats = torch.cat([100 * v + base for v in range(views)]).unsqueeze(1)
    labels = torch.arange(n).repeat(views)
    ctx = feature_context(backbone, [str(i) for i in range(n)], base.unsqueeze(1), torch.arange(n))
    ctx.train_views = FeatureSet(feats, labels, tuple(str(i) for i in range(n * views)))
    for epoch in range(4):
        batches = list(train_batches(ctx, epoch, 4))
        assert [len(y) for _, y in batches] == [4, 4]  # 10 images, batch 4: the last 2 are dropped
        values = torch.cat([f[:, 0] for f, _ in batches])
        assert torch.all(values // 100 == epoch % views)  # one view per epoch
        assert torch.equal(values % 100, torch.cat([y for _, y in batches]).float())  # labels match rows
        assert len(set(values.tolist())) == 8  # no repeats within an epoch
    small = list(train_batches(ctx, 0, 32))  # fewer images than the batch: keep them all
    assert [len(y) for _, y in small] == [n]


# ------------------------------------------------------------------------------------------
# Linear probe


def test_search_c_follows_lpclip_bisection():
    # val accuracy peaks at log10 C = 2.3; the trace below was worked out by hand.
    def scorer(c):
        return f"model@{c:.6g}", 100.0 - abs(math.log10(c) - 2.3)

    result = search_c(scorer, COARSE_GRID, steps=8)
    assert [c for c, _ in result.coarse] == list(COARSE_GRID)
    intervals = [(round(math.log10(lo), 6), round(math.log10(hi), 6)) for lo, hi, _, _ in result.steps]
    assert intervals == [
        (1, 3),
        (2, 3),
        (2, 2.5),
        (2.25, 2.5),
        (2.25, 2.375),
        (2.25, 2.3125),
        (2.28125, 2.3125),
        (2.296875, 2.3125),
    ]
    assert math.log10(result.c) == pytest.approx(2.296875)  # left end of the last step kept
    assert result.model == f"model@{result.c:.6g}"


def test_search_c_ties_keep_first_grid_value_and_left_end():
    result = search_c(lambda c: (c, 50.0), COARSE_GRID, steps=3)
    # Coarse tie -> 1e6 (first); each tied step keeps the left end: 1e5 every time.
    assert [round(math.log10(lo), 6) for lo, _, _, _ in result.steps] == [5, 5, 5]
    assert [round(math.log10(hi), 6) for _, hi, _, _ in result.steps] == [7, 6, 5.5]
    assert result.c == pytest.approx(1e5)


def blobs(generator, n_per_class, centers, noise):
    labels = torch.arange(len(centers)).repeat_interleave(n_per_class)
    return centers[labels] + noise * torch.randn(len(labels), centers.shape[1], generator=generator), labels


def test_linear_probe_picks_best_val_c_and_classifies(backbone):
    from sklearn.linear_model import LogisticRegression

    g = torch.Generator().manual_seed(0)
    centers = 3.0 * torch.randn(4, 16, generator=g)
    x_train, y_train = blobs(g, 8, centers, 4.0)
    x_val, y_val = blobs(g, 25, centers, 4.0)  # noisy enough that val accuracy depends on C
    x_test, y_test = blobs(g, 50, centers, 4.0)
    names = ["a", "b", "c", "d"]
    val = FeatureSet(x_val, y_val, tuple(map(str, range(len(y_val)))))
    probe = LinearProbe(LinearProbeConfig())
    probe.fit(feature_context(backbone, names, x_train, y_train, val=val))

    # Independently: score every coarse C on val with sklearn; the first best is c*.
    accs = []
    for c in COARSE_GRID:
        clf = LogisticRegression(C=c, max_iter=1000).fit(x_train.double().numpy(), y_train.numpy())
        accs.append(100.0 * float((clf.predict(x_val.double().numpy()) == y_val.numpy()).mean()))
    assert [a for _, a in probe.search.coarse] == pytest.approx(accs)
    assert len(set(accs)) > 1  # the grid does discriminate on this problem
    c_star = COARSE_GRID[accs.index(max(accs))]
    first_left, first_right = probe.search.steps[0][:2]
    assert (first_left, first_right) == pytest.approx((c_star / 10, c_star * 10))
    last_left, last_right, acc_left, acc_right = probe.search.steps[-1]
    assert probe.search.c == (last_right if acc_left < acc_right else last_left)

    logits = probe.predict(QueryBatch(names, "{}", features=x_test))
    assert logits.shape == (200, 4)
    assert (logits.argmax(1) == y_test).float().mean() > 0.7  # chance is 0.25
    swapped = probe.predict(QueryBatch(["c", "a"], "{}", features=x_test))
    assert torch.equal(swapped, logits[:, [2, 0]])
    with pytest.raises(FewshotError, match="not trained on"):
        probe.predict(QueryBatch(["a", "zebra"], "{}", features=x_test))


# ------------------------------------------------------------------------------------------
# Zero-shot


def test_zeroshot_ensemble_is_normalised_mean_of_normalised_prompts(backbone):
    templates = ["a photo of a {}.", "a drawing of the {}.", "{} texture."]
    query = torch.randn(5, backbone.embed_dim, generator=torch.Generator().manual_seed(0))
    adapter = ZeroShot(ZeroShotConfig(ensemble=True))
    adapter.fit(feature_context(backbone, NAMES, query[:3], torch.arange(3)))
    logits = adapter.predict(QueryBatch(NAMES, templates[0], features=query, templates=templates))

    # Independently, with open_clip's own (untruncated) encode_text.
    with torch.no_grad():
        per_template = [
            F.normalize(
                backbone.model.encode_text(backbone.tokenize([t.format(n) for n in NAMES])).float(), dim=-1
            )
            for t in templates
        ]
    weights = F.normalize(torch.stack(per_template).mean(0), dim=-1)
    expected = backbone.logit_scale * F.normalize(query, dim=-1) @ weights.t()
    assert torch.allclose(logits, expected, atol=1e-4)

    single = ZeroShot(ZeroShotConfig())
    single.fit(feature_context(backbone, NAMES, query[:3], torch.arange(3)))
    one = single.predict(QueryBatch(NAMES, templates[1], features=query, templates=templates))
    assert torch.allclose(
        one, backbone.logit_scale * F.normalize(query, dim=-1) @ per_template[1].t(), atol=1e-4
    )
    assert len(adapter.templates_for(QueryBatch(NAMES, "{}."))) == 80  # no dataset list: OpenAI's 80


# ------------------------------------------------------------------------------------------
# CoOp


def fit_coop(backbone, classnames, **overrides) -> CoOp:
    g = torch.Generator().manual_seed(0)
    n = 4 * len(classnames)
    feats, labels = torch.randn(n, backbone.embed_dim, generator=g), torch.arange(len(classnames)).repeat(4)
    views = FeatureSet(torch.cat([feats, feats.flip(0)]), torch.cat([labels, labels.flip(0)]), ("x",) * 2 * n)
    adapter = CoOp(CoOpConfig.build(overrides=overrides))
    adapter.fit(feature_context(backbone, classnames, feats, labels, views=views))
    return adapter


@pytest.mark.parametrize(
    ("position", "prompt"),
    [("end", "a photo of a {}."), ("middle", "a photo {} of a."), ("front", "{} a photo of a.")],
)
def test_coop_untrained_word_init_equals_encoding_the_text(backbone, position, prompt):
    """With ctx = the embeddings of "a photo of a" and no training, the learned prompt *is*
    that text with the class tokens at the chosen position."""
    adapter = fit_coop(backbone, NAMES, ctx_init="a photo of a", epochs=0, class_token_position=position)
    assert adapter.n_ctx == 4
    expected = backbone.encode_texts([prompt.format(name) for name in NAMES])
    assert (adapter.text_features(NAMES) - expected).abs().max() < 1e-5


def test_coop_prompt_layout_and_eot_positions(backbone):
    adapter = fit_coop(backbone, NAMES, epochs=0, n_ctx=4, class_token_position="front")
    prompts = adapter.prompts_for(NAMES)
    # Token lengths of the names, counted independently: ids between SOS and EOT.
    name_lens = [int((backbone.tokenize([n])[0] != 0).sum()) - 2 for n in NAMES]
    assert name_lens[0] == 2  # "red circle"
    assert prompts.tokens.argmax(-1).tolist() == [1 + 4 + k + 1 for k in name_lens]  # SOS ctx name . EOT
    # "end" layout positions: 0 SOS, 1-4 ctx, 5-6 "red circle", 7 ".", 8 EOT; "front" puts the name first.
    assert prompts.order[0, :9].tolist() == [0, 5, 6, 1, 2, 3, 4, 7, 8]
    embeddings = assemble_prompts(prompts, adapter.learner.ctx.expand(len(NAMES), -1, -1))
    ctx = adapter.learner.ctx.detach()
    words = backbone.model.token_embedding(backbone.tokenize(["red circle"])[0, 1:3])
    assert torch.equal(embeddings[0, 1:3].detach(), words)
    assert torch.equal(embeddings[0, 3:7].detach(), ctx)

    middle = fit_coop(backbone, NAMES, epochs=0, n_ctx=4, class_token_position="middle")
    assert middle.prompts_for(NAMES).order[0, :9].tolist() == [0, 1, 2, 5, 6, 3, 4, 7, 8]


def test_coop_trains_only_the_context_and_handles_new_class_names(backbone):
    adapter = fit_coop(backbone, NAMES, epochs=2, n_ctx=4)
    assert adapter.trainable_parameters() == 4 * backbone.model.token_embedding.weight.shape[1]
    assert not any(p.requires_grad for p in backbone.model.parameters())
    features = torch.randn(6, backbone.embed_dim)
    novel = ["yellow star", "purple hexagon"]
    assert adapter.predict(QueryBatch(novel, "{}", features=features)).shape == (6, 2)
    assert adapter.predict(QueryBatch(NAMES, "{}", features=features)).shape == (6, 3)


def test_coop_training_lowers_the_training_loss(backbone):
    """Targets: text features of another phrasing of each class, plus noise; learning the
    context must pull the prompts towards them."""
    names = ["red circle", "blue square", "green triangle", "yellow star", "purple diamond", "orange heart"]
    labels = torch.arange(len(names)).repeat(8)
    target = backbone.encode_texts([f"a sketch of the {n}, drawn badly." for n in names])
    feats = target[labels] + 0.2 * torch.randn(
        len(labels), backbone.embed_dim, generator=torch.Generator().manual_seed(0)
    )
    views = FeatureSet(feats, labels, ("x",) * len(labels))

    def loss_after(epochs: int) -> tuple[float, torch.Tensor]:
        adapter = CoOp(CoOpConfig.build(overrides={"epochs": epochs, "batch_size": 8}))
        adapter.fit(feature_context(backbone, names, feats, labels, views=views))
        logits = adapter.predict(QueryBatch(names, "{}", features=feats))
        return F.cross_entropy(logits, labels).item(), adapter.learner.ctx.detach()

    (before, ctx_before), (after, ctx_after) = loss_after(0), loss_after(15)
    assert ctx_before.shape == ctx_after.shape == (16, backbone.model.token_embedding.weight.shape[1])
    assert after < 0.85 * before


def test_coop_class_specific_context(backbone):
    adapter = fit_coop(backbone, NAMES, epochs=1, class_specific=True, ctx_init="a photo of a")
    assert adapter.learner.ctx.shape[:2] == (3, 4)
    assert adapter.supports_novel is False
    features = torch.randn(2, backbone.embed_dim)
    swapped = adapter.predict(QueryBatch(NAMES[::-1], "{}", features=features))
    assert torch.allclose(swapped, adapter.predict(QueryBatch(NAMES, "{}", features=features)).flip(1))
    with pytest.raises(FewshotError, match="unseen classes"):
        adapter.predict(QueryBatch(["yellow star"], "{}", features=features))


def test_coop_presets_and_validation():
    assert [CoOpConfig.build("fewshot", k).epochs for k in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    b2n = CoOpConfig.build("base2novel", 16)
    assert (b2n.ctx_init, b2n.n_ctx, b2n.epochs) == ("a photo of a", 4, 200)
    xd = CoOpConfig.build("cross-dataset", 16)
    assert (xd.ctx_init, xd.epochs) == ("a photo of a", 50)
    # ImageNet: the *_ep50 configs at every shot count, vit_b16_ep50_ctxv1 in base-to-novel.
    imagenet = [CoOpConfig.build("fewshot", k, dataset="imagenet").epochs for k in (1, 2, 4, 8, 16)]
    assert imagenet == [50] * 5
    b2n_imagenet = CoOpConfig.build("base2novel", 16, dataset="imagenet")
    assert (b2n_imagenet.ctx_init, b2n_imagenet.n_ctx, b2n_imagenet.epochs) == ("a photo of a", 4, 50)
    assert CoOpConfig.build("fewshot", 16, dataset="caltech101").epochs == 200
    assert CoOpConfig.build("fewshot", 1, {"epochs": "7"}).epochs == 7
    with pytest.raises(ConfigError, match="class_token_position"):
        CoOpConfig(class_token_position="start")


def test_coop_online_augmentation_encodes_augmented_images(backbone, monkeypatch):
    from fewshot.testing import make_fit_context

    ctx = make_fit_context(backbone, classes=(0, 1, 2), shots=2, aug_views=0)
    assert ctx.train_views is None
    calls = []
    encode = backbone.encode_images
    monkeypatch.setattr(backbone, "encode_images", lambda images: calls.append(len(images)) or encode(images))
    adapter = CoOp(CoOpConfig.build(overrides={"epochs": 2, "n_ctx": 4, "batch_size": 4}))
    adapter.fit(ctx)
    assert calls == [4, 4]  # 6 support images, batch 4: the short last batch is dropped; 2 epochs


def test_linear_probe_reports_its_parameter_count() -> None:
    from fewshot.methods.linear_probe import LinearProbe
    from fewshot.testing import make_fit_context

    ctx = make_fit_context("toy", "toy-colors", classes=(0, 1, 2), shots=4)
    probe = LinearProbe()
    assert probe.trainable_parameters() == 0
    probe.fit(ctx)
    dim = ctx.train.features.shape[1]
    assert probe.trainable_parameters() == 3 * dim + 3  # weights + biases of 3 classes
