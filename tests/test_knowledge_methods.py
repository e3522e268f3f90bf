"""DCLIP, CuPL and ProAPO: scores against direct computations, phrase rules, the fitness, the
search's monotone history, determinism, and that the test split never steers ProAPO."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
import torch.nn.functional as F

from fewshot.descriptions import DescriptionSet
from fewshot.methods._proapo_search import Scorer, Weights, fitness_terms, template_library
from fewshot.methods.cupl import CuPL, CuPLConfig
from fewshot.methods.dclip import DCLIP, DCLIPConfig, dclip_strings, descriptor_phrase
from fewshot.methods.proapo import ProAPO, ProAPOConfig
from fewshot.methods.zeroshot import default_templates
from fewshot.testing import check_adapter, make_fit_context, make_query_batch
from fewshot.toyworld.catalog import class_descriptions, class_descriptors

CLASSES = (0, 1, 2, 3, 4)
NAMES = ["circle", "square", "triangle", "star", "diamond"]  # toy-shapes, labels 0..4

# A DCLIP-style published file: class name -> descriptors, as written by an LLM.
PUBLISHED = {
    "circle": ["a round outline", "no corners", "has a smooth edge"],
    "square": ["arched sides", "four equal sides", "used in tiling"],
    "triangle": ["three corners", "often pointed upwards"],
    "star": ["five points", "can look like a sparkle"],
    "diamond": ["an tilted square", "typically shown on cards", "may be blue"],
}
EXPECTED_STRINGS = {  # DCLIP's rules applied by hand (descriptor_strings.make_descriptor_sentence)
    "circle": [
        "circle, which is a round outline",
        "circle, which has no corners",
        "circle, which has a smooth edge",
    ],
    "square": [
        "square, which is arched sides",
        "square, which has four equal sides",
        "square, which is used in tiling",
    ],
    "triangle": ["triangle, which has three corners", "triangle, which often pointed upwards"],
    "star": ["star, which has five points", "star, which can look like a sparkle"],
    "diamond": [
        "diamond, which is an tilted square",
        "diamond, which typically shown on cards",
        "diamond, which may be blue",
    ],
}


@pytest.fixture(scope="module")
def published(tmp_path_factory) -> DescriptionSet:
    """The file as DCLIP publishes one (a plain dict, one key spelt as the file's authors
    did), read and matched to the dataset's names by fewshot's own loader."""
    from fewshot.descriptions.files import match_classes, read_description_file

    path = tmp_path_factory.mktemp("sets") / "descriptors_toy.json"
    path.write_text(json.dumps({("Circle" if k == "circle" else k): v for k, v in PUBLISHED.items()}))
    found = read_description_file(path, "descriptions")
    matched = match_classes(found.classes, NAMES, what="descriptors_toy.json")
    return DescriptionSet("dclip", matched, provenance=found.provenance)


@pytest.fixture(scope="module")
def ctx():
    return make_fit_context("toy", "toy-shapes", classes=CLASSES, shots=1, aug_views=0)


@pytest.fixture(scope="module")
def query():
    return make_query_batch("toy", "toy-shapes", classes=CLASSES, per_class=3)


def _cos_to(backbone, features: torch.Tensor, strings: list[str]) -> torch.Tensor:
    text = F.normalize(backbone.encode_texts(strings, normalize=False).float(), dim=-1)
    return F.normalize(features.float(), dim=-1) @ text.t()


@pytest.mark.parametrize(
    ("descriptor", "phrase"),
    [
        ("arched beak", "which is arched beak"),  # DCLIP's quirk: any word starting with "a"
        ("a long tail", "which is a long tail"),
        ("an orange bill", "which is an orange bill"),
        ("has wings", "which has wings"),
        ("often seen in trees", "which often seen in trees"),
        ("typically brown", "which typically brown"),
        ("may have spots", "which may have spots"),
        ("can fly", "which can fly"),
        ("used for hunting", "which is used for hunting"),
        ("black feathers", "which has black feathers"),
        ("Arched back", "which has Arched back"),  # case as written: no lower-casing
        ("", "which has "),
    ],
)
def test_dclip_phrase_rules(descriptor, phrase):
    assert descriptor_phrase(descriptor) == phrase


def test_dclip_strings_and_imagenet_period():
    assert dclip_strings("sea_lion", ("has flippers",)) == ["sea lion, which has flippers"]
    assert dclip_strings("x", ()) == ["x, which has "]  # an empty list becomes [''] in DCLIP
    assert DCLIPConfig.build("fewshot", 1, dataset="imagenet").after == "."
    assert DCLIPConfig.build("fewshot", 1, dataset="dtd").after == ""
    assert dclip_strings("goldfish", ("orange body",), ".") == ["goldfish, which has orange body."]
    assert DCLIPConfig.build("fewshot", 1, dataset="toy-shapes").descriptions == "toy"
    assert DCLIPConfig.build("fewshot", 1, dataset="dtd").descriptions == "dclip"


def test_dclip_scores_are_the_mean_cosine_to_descriptor_strings(ctx, query, published):
    ctx.descriptions, query.descriptions = published, published
    method = DCLIP(DCLIPConfig(descriptions="dclip"))
    method.fit(ctx)
    logits = method.predict(query) / ctx.backbone.logit_scale
    expected = torch.stack(
        [_cos_to(ctx.backbone, query.features, EXPECTED_STRINGS[name]).mean(dim=1) for name in NAMES], dim=1
    )
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    baseline = DCLIP(DCLIPConfig(descriptions="dclip", baseline=True))
    baseline.fit(ctx)
    torch.testing.assert_close(
        baseline.predict(query) / ctx.backbone.logit_scale, _cos_to(ctx.backbone, query.features, NAMES)
    )


@pytest.mark.parametrize("standard", [False, True])
def test_cupl_scores_are_the_cosine_to_the_mean_sentence_embedding(ctx, query, published, standard):
    ctx.descriptions, query.descriptions = published, published
    method = CuPL(CuPLConfig(descriptions="cupl", standard=standard))
    method.fit(ctx)
    logits = method.predict(query) / ctx.backbone.logit_scale
    columns = []
    for name in NAMES:
        pooled = [t.format(name) for t in default_templates()] if standard else []
        pooled += PUBLISHED[name]  # sentences as written, no template, pooled with the 80
        text = F.normalize(ctx.backbone.encode_texts(pooled, normalize=False).float(), dim=-1)
        weight = F.normalize(text.mean(dim=0), dim=0)
        columns.append(F.normalize(query.features.float(), dim=-1) @ weight)
    torch.testing.assert_close(logits, torch.stack(columns, dim=1), atol=1e-5, rtol=1e-5)


def test_a_named_set_that_did_not_arrive_is_an_error(ctx):
    ctx.descriptions = None
    with pytest.raises(Exception, match="carries no descriptions"):
        DCLIP(DCLIPConfig(descriptions="dclip")).fit(ctx)


def test_fitness_equals_an_independent_computation():
    g = torch.Generator().manual_seed(0)
    image = F.normalize(torch.randn(40, 16, generator=g), dim=-1)
    labels = torch.randint(0, 7, (40,), generator=g)
    text = F.normalize(torch.randn(3, 7, 16, generator=g), dim=-1)
    w = Weights(top1=0.3, top5=0.2, redundancy=0.7, ce=10.0)
    got = Scorer.fitness(fitness_terms(image, labels, text, 50.0), w)
    for s in range(3):
        logits = 50.0 * image @ text[s].t()
        order = logits.argsort(dim=1, descending=True)
        acc1 = sum(int(order[n, 0] == labels[n]) for n in range(40)) / 40 * 100
        acc5 = sum(int(labels[n] in order[n, :5].tolist()) for n in range(40)) / 40 * 100
        sim = text[s] @ text[s].t()
        r = sum((sim[i, j] - (1.0 if i == j else 0.0)) ** 2 for i in range(7) for j in range(i, 7)) ** 0.5
        ce = -sum(torch.log_softmax(logits[n], dim=0)[labels[n]] for n in range(40)) / 40
        expected = 0.3 * acc1 + 0.2 * acc5 + 0.7 * r - 10.0 * ce
        assert abs(float(got[s]) - float(expected)) < 1e-3


def test_template_library_type_variants():
    library = template_library(["a photo of a {}.", "itap of a {}."], ["bird"], "a photo of a {}.")
    assert library[0] == "a photo of a {}."
    for variant in (
        "a photo of a {}, a type of bird.",
        "a photo of a bird: {}.",
        "a bird of a {}.",
        "a bird photo of a {}.",
        "itap of a {}, a type of bird.",
        "itap of a bird: {}.",
    ):
        assert variant in library
    assert "itap of a bird photo {}." not in library and len(library) == len(set(library)) == 8


def _toy_sets() -> tuple[DescriptionSet, DescriptionSet]:
    descriptions = DescriptionSet("toy", {n: tuple(class_descriptions(n)) for n in NAMES})
    synonym = {n: (f"shape {class_descriptors(n)[0]}",) for n in NAMES}
    synonyms = DescriptionSet("toy", synonym, kind="synonyms")
    return descriptions, synonyms


FAST = ProAPOConfig(descriptions="toy", synonyms="toy", type_words="shape", epochs=3, epochs_outer=1)


@pytest.fixture(scope="module")
def searched(ctx):
    ctx.descriptions, ctx.synonyms = _toy_sets()
    ctx.generator = torch.Generator().manual_seed(ctx.seed)
    method = ProAPO(FAST)
    method.fit(ctx)
    return method


def test_proapo_training_fitness_never_decreases(searched):
    history = searched.selected()["fitness_history"]
    assert len(history["templates"]) == FAST.epochs + 1 and len(history["descriptions"]) >= 2
    for stage in history.values():
        assert all(b >= a - 1e-4 for a, b in itertools.pairwise(stage)), stage
    assert searched.extra_costs()["prompts_encoded"] > 0


def test_proapo_logged_fitness_is_that_of_the_chosen_prompts(ctx, searched):
    """The last logged fitness is the fitness of what was chosen, recomputed here from the
    chosen templates and items with the backbone and the paper's formula (option.py weights)."""
    backbone, templates = ctx.backbone, searched.selected()["templates"]
    embeddings = []
    for name in ctx.classnames:
        prompts = [
            t.format(label) + (f" {description}" if description else "")
            for label, description in searched.class_items[name]
            for t in templates
        ]
        each = F.normalize(backbone.encode_texts(prompts, normalize=True).float(), dim=-1)
        embeddings.append(F.normalize(each.mean(dim=0), dim=-1))
    text = torch.stack(embeddings)
    image = F.normalize(ctx.train.features.float(), dim=-1)
    labels = ctx.train.labels
    logits = backbone.logit_scale * image @ text.t()
    order = logits.argsort(dim=1, descending=True)
    acc1 = (order[:, 0] == labels).float().mean() * 100
    acc5 = (order[:, :5] == labels[:, None]).any(dim=1).float().mean() * 100
    sim = text @ text.t() - torch.eye(len(text))
    r = torch.triu(sim).pow(2).sum().sqrt()
    ce = F.cross_entropy(logits, labels)
    expected = 0.1 * acc1 + 0.1 * acc5 + 0.05 * r - 10.0 * ce
    assert searched.selected()["fitness_history"]["descriptions"][-1] == pytest.approx(
        float(expected), abs=2e-3
    )


def test_proapo_is_deterministic_and_predicts_novel_classes(ctx, query, searched):
    again = ProAPO(FAST)
    ctx.generator = torch.Generator().manual_seed(ctx.seed)  # a run's fresh generator
    again.fit(ctx)
    assert again.selected() == searched.selected()
    query.descriptions = query.synonyms = None
    assert torch.equal(again.predict(query), searched.predict(query))
    novel = make_query_batch("toy", "toy-shapes", classes=(5, 6), per_class=2)
    assert searched.predict(novel).shape == (4, 2)


@pytest.mark.parametrize(
    ("cls", "overrides"),
    [
        (DCLIP, {"descriptions": "toy"}),
        (CuPL, {"descriptions": "toy", "standard": True}),
        (ProAPO, {"descriptions": "toy", "synonyms": "toy", "epochs": 2, "epochs_outer": 1}),
    ],
)
def test_contract_with_the_toy_sets(cls, overrides):
    """The Adapter contract with the sets read (the registry-wide contract test runs the
    methods without a dataset, hence without sets)."""
    check_adapter(cls, overrides=overrides)


def test_crossover_keeps_what_every_present_top_set_holds():
    """With fewer scored sets than `top` (common in a group's search), crossover still keeps
    the items all of them share and draws the rest."""
    from fewshot.methods._proapo_search import Evolution

    evolution = Evolution(lambda keys: torch.zeros(len(keys)), torch.Generator().manual_seed(0), 4)
    out: list = []
    evolution._crossover(out, [frozenset({1, 2, 3}), frozenset({1, 4, 5})], 12)
    assert out and all(1 in key for key in out)
    assert all(key <= {1, 2, 3, 4, 5} for key in out)
