"""Shared-prefix text encoding: the methods' text features and gradients equal a full-length
reference built in this file from open_clip's own modules, and the full path is taken where
nothing is shared.

The reference (:func:`reference_text`) assembles every class prompt here with ``torch.cat``
and runs open_clip's text blocks over all ``context_length`` positions (no EOT cut, no
prefix sharing), deep prompts replacing positions 1..n before blocks 1..J-1.
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import logging
import random
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import open_clip
import pytest
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock
from torch import nn

from fewshot import prompting
from fewshot.backbones import Backbone, load_backbone
from fewshot.methods.base import Adapter
from fewshot.methods.cocoop import CoCoOp, CoCoOpConfig
from fewshot.methods.coop import CoOp, CoOpConfig
from fewshot.methods.kgcoop import KgCoOp, KgCoOpConfig
from fewshot.methods.maple import MaPLe, MaPLeConfig
from fewshot.prompting import _shared
from fewshot.prompting import prompts as prompts_module
from fewshot.prompting._shared import length_groups
from fewshot.testing import make_fit_context
from fewshot.types import BackboneSpec

TOL = 1e-5  # max abs difference, fp32
# toy-objects' names (2 tokens) and one long name: the suffixes fall into two length groups.
NAMES = [
    "red circle",
    "red square",
    "blue triangle",
    "green circle",
    "yellow square",
    "blue circle",
    "green triangle",
    "red triangle",
    "yellow circle",
    "blue square",
    "green square",
    "yellow triangle",
    "striped shape never seen before in this small world",
]
CASES = ["coop-end", "coop-middle", "kgcoop", "cocoop", "maple"]


@pytest.fixture(autouse=True)
def _quiet_open_clip() -> Iterator[None]:
    logging.disable(logging.WARNING)  # open_clip warns about every randomly initialised model
    yield
    logging.disable(logging.NOTSET)


def _vit_b16() -> Backbone:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    preprocess = open_clip.image_transform(224, is_train=False)
    return Backbone(
        BackboneSpec.parse("ViT-B-16:openai"), model, preprocess, open_clip.get_tokenizer("ViT-B-16")
    )


@pytest.fixture(scope="module", params=["toy", "vit_b16"])
def fitted(request: pytest.FixtureRequest) -> dict[str, Adapter]:
    """Every case's adapter, fitted with 0 epochs (its initial prompts) on one backbone."""
    backbone = load_backbone("toy") if request.param == "toy" else _vit_b16()
    assert backbone.model.transformer.batch_first  # the reference feeds (N, L, W)
    ctx = make_fit_context(backbone, "toy-objects", classes=(0, 1, 2), shots=1, aug_views=0)
    adapters: dict[str, Adapter] = {
        "coop-end": CoOp(CoOpConfig(epochs=0)),
        "coop-middle": CoOp(CoOpConfig(epochs=0, class_token_position="middle")),
        "kgcoop": KgCoOp(KgCoOpConfig(epochs=0)),
        "cocoop": CoCoOp(CoCoOpConfig(epochs=0)),
        "maple": MaPLe(MaPLeConfig(epochs=0)),
    }
    for adapter in adapters.values():
        adapter.fit(ctx)
    with torch.no_grad():  # move the deep prompts away from their small init
        for p in adapters["maple"].prompts.deep_text:  # type: ignore[union-attr]
            p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(4))
    return adapters


# ------------------------------------------------------------------------------------------
# The independent reference


def reference_text(
    model: nn.Module, tokens: torch.Tensor, embeddings: torch.Tensor, deep: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """open_clip's text tower on prompt embeddings (N, L, W), all L positions, block by block."""
    x = embeddings + model.positional_embedding
    for j, block in enumerate(model.transformer.resblocks):
        if 1 <= j <= len(deep):
            n = deep[j - 1].shape[0]
            x = torch.cat([x[:, :1], deep[j - 1].expand(x.shape[0], -1, -1), x[:, 1 + n :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    x = model.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def reference_prompts(
    backbone: Backbone, words: str, names: Sequence[str], ctx: torch.Tensor, position: str = "end"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids (C, L) of "{words} {name}." and their embeddings with positions 1..M
    replaced by ``ctx`` (M, W), the class tokens at the ``end`` or in the ``middle``."""
    model, m = backbone.model, ctx.shape[0]
    tokens = backbone.tokenize([f"{words} {name}." for name in names])
    embedded = model.token_embedding(tokens)
    rows = []
    for row, name in zip(embedded, names, strict=True):
        name_len = int(backbone.tokenize([name])[0].argmax()) - 1  # between SOS and EOT
        sos, rest = row[:1], row[1 + m :]
        if position == "end":
            rows.append(torch.cat([sos, ctx, rest]))
        else:
            half = m // 2
            rows.append(torch.cat([sos, ctx[:half], rest[:name_len], ctx[half:], rest[name_len:]]))
    return tokens, torch.stack(rows)


# ------------------------------------------------------------------------------------------
# Each case: the method's own text path, the reference, the learnable tensors


Encode = Callable[[], torch.Tensor]


def _case(name: str, adapter: Any, image: torch.Tensor) -> tuple[Encode, Encode, list[torch.Tensor]]:
    backbone, model = adapter.backbone, adapter.backbone.model
    prompts = adapter.prompts_for(NAMES)
    words = adapter.prompts_for.prefix
    if name == "cocoop":
        learner = adapter.learner

        def reference() -> torch.Tensor:
            per_image = []
            for ctx in learner.contexts(image):  # (M, W) per image
                tokens, embeds = reference_prompts(backbone, words, NAMES, ctx)
                per_image.append(reference_text(model, tokens, embeds))
            return torch.stack(per_image)

        return lambda: adapter._conditional_text(image, prompts, "fit"), reference, list(learner.parameters())
    if name == "maple":
        maple = adapter.prompts

        def reference() -> torch.Tensor:
            tokens, embeds = reference_prompts(backbone, words, NAMES, maple.ctx)
            return reference_text(model, tokens, embeds, list(maple.deep_text))

        return lambda: adapter._encode_text(prompts), reference, [maple.ctx, *maple.deep_text]
    ctx, position = adapter.learner.ctx, adapter.config.class_token_position

    def reference() -> torch.Tensor:
        return reference_text(model, *reference_prompts(backbone, words, NAMES, ctx, position))

    return lambda: adapter._encode(prompts), reference, [ctx]


def _loss(text: torch.Tensor, image: torch.Tensor, scale: float) -> torch.Tensor:
    """CoOp's training loss: cross-entropy of scale · cos(image, text) (per-image text for CoCoOp)."""
    text = F.normalize(text.float(), dim=-1)
    per_image = text.dim() == 3
    logits = scale * (torch.einsum("bd,bcd->bc", image, text) if per_image else image @ text.t())
    return F.cross_entropy(logits, torch.arange(image.shape[0]) % len(NAMES))


@pytest.mark.parametrize("case", CASES)
def test_text_features_and_gradients_equal_the_full_length_reference(
    fitted: dict[str, Adapter], case: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    adapter: Any = fitted[case]
    calls = _count_shared_calls(monkeypatch)
    gen = torch.Generator().manual_seed(1)
    image = F.normalize(torch.randn(3, adapter.backbone.embed_dim, generator=gen), dim=-1)
    encode, reference, params = _case(case, adapter, image)
    got, expected = encode(), reference()
    scale = adapter.backbone.logit_scale
    grads = torch.autograd.grad(_loss(got, image, scale), params, allow_unused=True)
    expected_grads = torch.autograd.grad(_loss(expected, image, scale), params, allow_unused=True)
    # The shared path is taken wherever the prompts share a prefix: all but `middle`.
    assert (calls[0] > 0) == (case != "coop-middle")
    assert got.shape == expected.shape
    feature_diff = (got - expected).abs().max().item()
    grad_diff = max((g - e).abs().max().item() for g, e in zip(grads, expected_grads, strict=True))
    print(f"\n{case} {adapter.backbone.id}: features {feature_diff:.2e}, gradients {grad_diff:.2e}")
    assert feature_diff < TOL
    assert grad_diff < TOL
    assert all(e.abs().max() > 100 * TOL for e in expected_grads)  # the gradients are not ~0


def _count_shared_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls = [0]
    original = prompts_module.encode_shared_prefix

    def counting(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls[0] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(prompts_module, "encode_shared_prefix", counting)
    return calls


# ------------------------------------------------------------------------------------------
# The plan: where the prefix is shared, and where the full path is taken


@pytest.fixture(scope="module")
def toy() -> tuple[Backbone, prompting.TextTower]:
    backbone = load_backbone("toy")
    return backbone, prompting.text_tower(backbone.model)


def _prompts(toy: tuple[Backbone, prompting.TextTower], m: int, words: str, position: str = "end") -> Any:
    return prompting.build_class_prompts(*toy, NAMES, m, words, position)


def _ctx(m: int, classes: int | None = None) -> torch.Tensor:
    shape = (m, 128) if classes is None else (classes, m, 128)
    return torch.randn(shape, generator=torch.Generator().manual_seed(2))


def test_prefix_is_sos_context_and_the_fixed_words_every_prompt_shares(toy):
    tower = toy[1]
    maple = _prompts(toy, 2, "a photo of a")  # "of a" stays after the two learned tokens
    assert prompting.shared_prefix_plan(tower, maple, _ctx(2)).length == 1 + 2 + 2
    coop = _prompts(toy, 4, "X X X X")  # the class names differ from their first token on
    plan = prompting.shared_prefix_plan(tower, coop, _ctx(4))
    assert plan.length == 1 + 4
    eot = coop.tokens.argmax(dim=-1)
    seen = torch.cat([rows for rows, _ in plan.groups]).sort().values
    assert torch.equal(seen, torch.arange(len(NAMES)))  # every class in exactly one group
    for rows, size in plan.groups:
        assert int((eot[rows] - plan.length).max()) + 1 == size  # each group runs to its longest EOT
    assert len(plan.groups) == 2  # the long name runs alone


def test_a_per_image_context_is_shared_by_the_classes_of_each_image(toy):
    tower, prompts = toy[1], _prompts(toy, 4, "X X X X")
    per_image = _ctx(4, classes=3).unsqueeze(1)  # (B, 1, M, W)
    expanded = per_image.expand(-1, len(NAMES), -1, -1)
    assert prompting.shared_prefix_plan(tower, prompts, expanded) is not None
    copied = expanded.contiguous()  # equal values, but not known to be shared
    assert prompting.shared_prefix_plan(tower, prompts, copied) is None


@pytest.mark.parametrize("position", ["middle", "front"])
def test_full_path_when_the_class_tokens_are_not_at_the_end(toy, position):
    prompts = _prompts(toy, 4, "X X X X", position)
    assert prompting.shared_prefix_plan(toy[1], prompts, _ctx(4)) is None


def test_full_path_for_class_specific_contexts_and_a_single_class(toy):
    tower, prompts = toy[1], _prompts(toy, 4, "X X X X")
    assert prompting.shared_prefix_plan(tower, prompts, _ctx(4, classes=len(NAMES))) is None
    single = prompting.build_class_prompts(*toy, NAMES[:1], 4, "X X X X")
    assert prompting.shared_prefix_plan(tower, single, _ctx(4).unsqueeze(0)) is None


def test_full_path_for_a_prefix_of_one_position(toy):
    tower = toy[1]
    prompts = prompting.build_class_prompts(*toy, ["circle", "square", "ring"], 0, "")  # no context
    ctx = torch.zeros(0, 128)
    assert prompting.shared_prefix_plan(tower, prompts, ctx.expand(3, -1, -1)) is None
    with torch.no_grad():
        got = prompting.encode_class_prompts(tower, prompts, ctx)
        expected = reference_text(toy[0].model, prompts.tokens, toy[0].model.token_embedding(prompts.tokens))
    assert (got - expected).abs().max() < TOL


def test_full_path_for_per_prompt_deep_prompts_or_ones_past_the_prefix(toy):
    tower, prompts = toy[1], _prompts(toy, 2, "a photo of a")  # P = 5
    shared = _ctx(2).expand(len(NAMES), -1, -1)
    deep = [_ctx(4)] * 2
    assert prompting.shared_prefix_plan(tower, prompts, shared, deep) is not None  # 1 + 4 <= 5
    assert prompting.shared_prefix_plan(tower, prompts, shared, [_ctx(5)] * 2) is None
    per_prompt = [p.expand(len(NAMES), -1, -1) for p in deep]
    assert prompting.shared_prefix_plan(tower, prompts, shared, per_prompt) is None


def test_full_path_for_a_tower_that_is_not_causal(toy):
    tower = dataclasses.replace(toy[1], attn_mask=None)
    assert prompting.shared_prefix_plan(tower, _prompts(toy, 4, "X X X X"), _ctx(4)) is None


def test_full_path_where_sharing_does_not_pay_for_its_passes(toy, monkeypatch):
    tower, ctx = toy[1], _ctx(4)
    plan = prompting.shared_prefix_plan(tower, _prompts(toy, 4, "X X X X"), ctx)
    saved = plan.full - plan.length - sum(len(rows) * size for rows, size in plan.groups)
    assert saved > 0
    # One pass through the blocks costs more than the positions sharing saves (a GPU's launches).
    monkeypatch.setitem(_shared.PASS_COST, "cpu", saved)
    prompts = _prompts(toy, 4, "X X X X")
    assert prompting.shared_prefix_plan(tower, prompts, ctx) is None
    per_image = ctx.expand(20, len(NAMES), -1, -1)  # 20 contexts: now sharing pays again
    assert prompting.shared_prefix_plan(tower, prompts, per_image) is not None
    with torch.no_grad():
        got = prompting.encode_class_prompts(tower, prompts, ctx)
        expected = reference_text(toy[0].model, *reference_prompts(toy[0], "X X X X", NAMES, ctx))
    assert (got - expected).abs().max() < TOL


class _OwnBlock(ResidualAttentionBlock):
    """A block type the shared path does not know (it could change the forward)."""


def test_full_path_for_unrecognised_blocks_and_the_same_features(toy):
    tower = toy[1]
    transformer = copy.deepcopy(tower.transformer)
    old = transformer.resblocks[1]
    new = _OwnBlock(128, old.attn.num_heads, batch_first=True)
    new.load_state_dict(old.state_dict())
    transformer.resblocks[1] = new.eval()
    own = dataclasses.replace(tower, transformer=transformer)
    prompts, ctx = _prompts(toy, 4, "X X X X"), _ctx(4)
    assert prompting.shared_prefix_plan(own, prompts, ctx.expand(len(NAMES), -1, -1)) is None
    with torch.no_grad():
        got = prompting.encode_class_prompts(own, prompts, ctx)
        expected = prompting.encode_class_prompts(tower, prompts, ctx)
    assert (got - expected).abs().max() < TOL


# ------------------------------------------------------------------------------------------
# Length groups


GROUP_COST = 16


def _cost(lengths: Sequence[int], groups: Sequence[Sequence[int]]) -> int:
    return sum(len(g) * max(lengths[r] for r in g) + GROUP_COST for g in groups)


def _brute_force(lengths: Sequence[int], max_groups: int) -> int:
    """The cheapest split of the distinct lengths into at most ``max_groups`` runs."""
    distinct = sorted(set(lengths))
    best = None
    for k in range(1, min(max_groups, len(distinct)) + 1):
        for cuts in itertools.combinations(range(1, len(distinct)), k - 1):
            bounds = [*cuts, len(distinct)]
            tops = [distinct[b - 1] for b in bounds]
            groups: list[list[int]] = [[] for _ in tops]
            for row, length in enumerate(lengths):
                groups[next(i for i, top in enumerate(tops) if length <= top)].append(row)
            cost = _cost(lengths, [g for g in groups if g])
            best = cost if best is None else min(best, cost)
    assert best is not None
    return best


@pytest.mark.parametrize("seed", range(20))
def test_length_groups_are_the_cheapest_split(seed):
    rng = random.Random(seed)
    lengths = [rng.choice([1, 2, 3, 5, 8, 9, 20]) for _ in range(rng.randint(1, 300))]
    groups = length_groups(lengths, max_groups=4, group_cost=GROUP_COST)
    assert sorted(r for g in groups for r in g) == list(range(len(lengths)))
    assert 1 <= len(groups) <= 4
    assert _cost(lengths, groups) == _brute_force(lengths, 4)
