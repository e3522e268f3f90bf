"""Deep prompts in both towers (fewshot.prompting): exact against hand-written references.

The references below are built from open_clip's own modules, block by block, without any
of fewshot's code: the text tower over the full context (no EOT cut), the image tower with
prompt tokens appended before ``ln_pre`` and the last tokens replaced before each block.
"""

from __future__ import annotations

import logging

import open_clip
import pytest
import torch
from open_clip.transformer import Transformer, VisionTransformer
from torch import nn

from fewshot import prompting
from fewshot.backbones import load_backbone
from fewshot.types import FewshotError

N = 3  # prompt tokens used throughout


@pytest.fixture(autouse=True)
def _quiet_open_clip():
    logging.disable(logging.WARNING)  # open_clip warns about every randomly initialised model
    yield
    logging.disable(logging.NOTSET)


@pytest.fixture(scope="module")
def toy() -> nn.Module:
    return load_backbone("toy").model


@pytest.fixture(scope="module")
def vit_b32() -> nn.Module:
    torch.manual_seed(0)
    return open_clip.create_model("ViT-B-32", pretrained=None).eval().requires_grad_(False)


def _tiny_vit(**kwargs: object) -> VisionTransformer:
    torch.manual_seed(3)
    vit = VisionTransformer(
        image_size=16, patch_size=8, width=32, layers=3, heads=2, mlp_ratio=2.0, output_dim=24, **kwargs
    )
    return vit.eval().requires_grad_(False)


def _images(size: int, count: int = 2) -> torch.Tensor:
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(5))


def _prompts(count: int, width: int, seed: int = 7) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(N, width, generator=gen) for _ in range(count)]


def _noise(like: torch.Tensor) -> torch.Tensor:
    # Random, not constant: LayerNorm would cancel a constant shift of every feature.
    return 10.0 * torch.randn(like.shape, generator=torch.Generator().manual_seed(9))


# ------------------------------------------------------------------------------------------
# Hand-written references from open_clip's modules


def _reference_image(visual: nn.Module, images: torch.Tensor, prompts: list[torch.Tensor]) -> torch.Tensor:
    """The MaPLe/IVLP image forward (docs/methods.md#backbone), CLIP pooling (class token)."""
    x = visual.conv1(images)
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1)  # appended BEFORE ln_pre
    x = visual.ln_pre(x)
    for j, block in enumerate(visual.transformer.resblocks):
        if 1 <= j < len(prompts):
            x = torch.cat([x[:, :-N], prompts[j].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    return visual.ln_post(x[:, 0]) @ visual.proj


def _reference_text(model: nn.Module, embeddings: torch.Tensor, deep: list[torch.Tensor]) -> torch.Tensor:
    """The full-length text tower with positions 1..N replaced before blocks 1..len(deep)."""
    x = embeddings + model.positional_embedding
    for j, block in enumerate(model.transformer.resblocks):
        if 1 <= j <= len(deep):
            x = torch.cat([x[:, :1], deep[j - 1].expand(x.shape[0], -1, -1), x[:, 1 + N :]], dim=1)
        x = block(x, attn_mask=model.attn_mask)
    return x


def _text_features(model: nn.Module, hidden: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    x = model.ln_final(hidden)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def _toy_prompt_embeddings(model: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer = open_clip.get_tokenizer(f"local-dir:{load_backbone('toy').weights_file.parent}")
    tokens = tokenizer(["X X X red circle.", "X X X blue square on a background.", "X X X ring."])
    embeds = model.token_embedding(tokens)
    ctx = _prompts(1, embeds.shape[-1], seed=11)[0]
    embeds = torch.cat([embeds[:, :1], ctx.expand(3, -1, -1), embeds[:, 1 + N :]], dim=1)
    return embeds, tokens


# ------------------------------------------------------------------------------------------
# Vision


@pytest.mark.parametrize("name", ["toy", "vit_b32"])
def test_no_prompts_equals_open_clip_encode_image(request, name):
    model = request.getfixturevalue(name)
    images = _images(model.visual.image_size[0], count=1 if name == "vit_b32" else 2)
    with torch.no_grad():
        expected = model.encode_image(images)
        got = prompting.encode_images_prompted(model, images)
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("name", "depth"), [("toy", 1), ("toy", 3), ("vit_b32", 9)])
def test_vision_prompts_match_the_reference_forward(request, name, depth):
    model = request.getfixturevalue(name)
    images = _images(model.visual.image_size[0], count=1 if name == "vit_b32" else 2)
    prompts = _prompts(depth, model.visual.class_embedding.shape[0])
    with torch.no_grad():
        expected = _reference_image(model.visual, images, prompts)
        got = prompting.encode_images_prompted(model, images, prompts)
        plain = model.encode_image(images)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)
    assert (got - plain).abs().max() > 1e-3  # the prompts do something


def test_vision_prompts_before_ln_pre_not_after(toy):
    # A reference that appends the prompts after ln_pre differs: the placement matters.
    visual, images = toy.visual, _images(48)
    prompts = _prompts(1, 128)
    with torch.no_grad():
        x = visual.conv1(images).flatten(2).transpose(1, 2)
        x = torch.cat([visual.class_embedding.expand(2, 1, -1), x], dim=1) + visual.positional_embedding
        x = torch.cat([visual.ln_pre(x), prompts[0].expand(2, -1, -1)], dim=1)
        after = visual.ln_post(visual.transformer(x)[:, 0]) @ visual.proj
        got = prompting.encode_images_prompted(toy, images, prompts)
    assert (got - after).abs().max() > 1e-3


def test_deep_vision_prompts_replace_the_previous_outputs(toy):
    """Outputs of block j-1 at the prompt positions never reach the result when block j has a
    prompt of its own: perturbing them (a hook on open_clip's block) changes nothing."""
    images, prompts = _images(48), _prompts(3, 128)
    blocks = toy.visual.transformer.resblocks

    def perturb(_module, _inputs, output):
        output = output.clone()
        output[:, -N:] += _noise(output[:, -N:])
        return output

    with torch.no_grad():
        clean = prompting.encode_images_prompted(toy, images, prompts)
        clean_shallow = prompting.encode_images_prompted(toy, images, prompts[:2])  # none at block 2
        handle = blocks[1].register_forward_hook(perturb)  # its prompt outputs feed block 2
        try:
            hooked = prompting.encode_images_prompted(toy, images, prompts)
            hooked_shallow = prompting.encode_images_prompted(toy, images, prompts[:2])
        finally:
            handle.remove()
        other = prompting.encode_images_prompted(toy, images, [*prompts[:2], prompts[2] + _noise(prompts[2])])
    assert torch.equal(hooked, clean)
    assert (hooked_shallow - clean_shallow).abs().max() > 1e-3  # the hook is live: without a prompt it leaks
    assert (other - clean).abs().max() > 1e-3  # block 2's own prompt matters


def test_deep_vision_prompts_equal_to_the_carried_states_change_nothing(toy):
    """Feeding block j the very hidden states it would have received at the prompt positions
    reproduces the run with the layer-0 prompt only (replacement, not addition)."""
    images, first = _images(48), _prompts(1, 128)[0]
    captured: list[torch.Tensor] = []
    blocks = toy.visual.transformer.resblocks
    handles = [
        b.register_forward_hook(lambda _m, _i, out: captured.append(out[:, -N:].clone())) for b in blocks
    ]
    with torch.no_grad():
        try:
            shallow = prompting.encode_images_prompted(toy, images, [first])
        finally:
            for handle in handles:
                handle.remove()
        carried = prompting.encode_images_prompted(toy, images, [first, *captured[:2]])
    assert torch.allclose(carried, shallow, atol=1e-5, rtol=0)


def test_vision_prompts_get_gradients(toy):
    prompts = [p.requires_grad_(True) for p in _prompts(3, 128)]
    prompting.encode_images_prompted(toy, _images(48), prompts).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in prompts)


def test_per_image_prompts_equal_shared_ones(toy):
    images, prompts = _images(48), _prompts(2, 128)
    with torch.no_grad():
        shared = prompting.encode_images_prompted(toy, images, prompts)
        per_image = prompting.encode_images_prompted(toy, images, [p.expand(2, -1, -1) for p in prompts])
    assert torch.equal(shared, per_image)


def test_sequence_first_transformer_gives_the_same_result():
    vit = _tiny_vit()
    seq_first = _tiny_vit()
    old = seq_first.transformer
    seq_first.transformer = Transformer(32, 3, 2, 2.0, batch_first=False).eval()
    seq_first.transformer.load_state_dict(old.state_dict())
    images, prompts = _images(16), _prompts(3, 32)
    with torch.no_grad():
        a = prompting.encode_images_prompted(vit, images, prompts)
        b = prompting.encode_images_prompted(seq_first, images, prompts)
        plain = prompting.encode_images_prompted(seq_first, images)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    assert torch.allclose(plain, seq_first(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("kwargs", [{"pool_type": "avg"}, {"final_ln_after_pool": True}])
def test_other_poolings_without_prompts_equal_open_clip(kwargs):
    vit = _tiny_vit(**kwargs)
    images = _images(16)
    with torch.no_grad():
        assert torch.allclose(prompting.encode_images_prompted(vit, images), vit(images), atol=1e-6, rtol=0)


def test_average_pooling_ignores_the_prompt_tokens():
    vit = _tiny_vit(pool_type="avg")
    images, prompts = _images(16), _prompts(1, 32)
    captured: list[torch.Tensor] = []
    handle = vit.transformer.register_forward_hook(lambda _m, _i, out: captured.append(out))
    with torch.no_grad():
        try:
            got = prompting.encode_images_prompted(vit, images, prompts)
        finally:
            handle.remove()
        patches = vit.ln_post(captured[0])[:, 1 : 1 + 4]  # 16/8 = 2x2 patches; prompts come after
        expected = patches.mean(dim=1) @ vit.proj
    assert torch.allclose(got, expected, atol=1e-6, rtol=0)


def test_resnet_tower_is_refused_with_a_clear_error():
    torch.manual_seed(0)
    rn50 = open_clip.create_model("RN50", pretrained=None)
    with pytest.raises(prompting.UnsupportedVisionTowerError, match=r"RN50:openai.*ModifiedResNet.*ViT"):
        prompting.vision_tower(rn50, "RN50:openai")


def test_attention_pool_tower_is_refused():
    vit = _tiny_vit(attentional_pool=True, attn_pooler_queries=4, attn_pooler_heads=2)
    with pytest.raises(prompting.UnsupportedVisionTowerError, match="attention pooler"):
        prompting.vision_tower(vit, "coca-like")
    assert issubclass(prompting.UnsupportedVisionTowerError, FewshotError)


def test_too_many_or_mismatched_vision_prompts_are_errors(toy):
    with pytest.raises(ValueError, match="deeper blocks"):
        prompting.encode_images_prompted(toy, _images(48), _prompts(4, 128))
    with pytest.raises(ValueError, match="prompts must all be"):
        prompting.encode_images_prompted(toy, _images(48), [torch.zeros(N, 128), torch.zeros(N + 1, 128)])


# ------------------------------------------------------------------------------------------
# Text


def test_no_deep_text_prompts_equal_encode_text(toy):
    tokenizer = open_clip.get_tokenizer(f"local-dir:{load_backbone('toy').weights_file.parent}")
    tokens = tokenizer(["a photo of a red circle.", "a ring."])
    with torch.no_grad():
        expected = toy.encode_text(tokens)
        got = prompting.encode_text_embeddings(
            toy, prompting.embed_tokens(toy, tokens), tokens, deep_prompts=()
        )
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_deep_text_prompts_match_the_full_length_reference(toy, depth):
    embeds, tokens = _toy_prompt_embeddings(toy)
    deep = _prompts(depth - 1, 128, seed=depth)
    with torch.no_grad():
        expected = _text_features(toy, _reference_text(toy, embeds, deep), tokens)
        got = prompting.encode_text_embeddings(toy, embeds, tokens, deep_prompts=deep)
        shallow = prompting.encode_text_embeddings(toy, embeds, tokens)
    assert torch.allclose(got, expected, atol=1e-5, rtol=0)  # the EOT cut stays exact
    if depth > 1:
        assert (got - shallow).abs().max() > 1e-3


def test_deep_text_prompts_replace_the_previous_outputs(toy):
    embeds, tokens = _toy_prompt_embeddings(toy)
    deep = _prompts(2, 128)
    blocks = toy.transformer.resblocks

    def perturb(_module, _inputs, output):
        output = output.clone()
        output[:, 1 : 1 + N] += _noise(output[:, 1 : 1 + N])
        return output

    with torch.no_grad():
        clean = prompting.encode_text_embeddings(toy, embeds, tokens, deep_prompts=deep)
        clean_shallow = prompting.encode_text_embeddings(toy, embeds, tokens, deep_prompts=deep[:1])
        handle = blocks[1].register_forward_hook(perturb)
        try:
            hooked = prompting.encode_text_embeddings(toy, embeds, tokens, deep_prompts=deep)
            hooked_shallow = prompting.encode_text_embeddings(toy, embeds, tokens, deep_prompts=deep[:1])
        finally:
            handle.remove()
        other = prompting.encode_text_embeddings(
            toy, embeds, tokens, deep_prompts=[deep[0], deep[1] + _noise(deep[1])]
        )
    assert torch.equal(hooked, clean)
    assert (hooked_shallow - clean_shallow).abs().max() > 1e-3  # the hook is live
    assert (other - clean).abs().max() > 1e-3


def test_deep_text_prompts_get_gradients_and_per_class_prompts_work(toy):
    embeds, tokens = _toy_prompt_embeddings(toy)
    deep = [p.requires_grad_(True) for p in _prompts(2, 128)]
    prompting.encode_text_embeddings(toy, embeds, tokens, deep_prompts=deep).square().sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in deep)
    with torch.no_grad():
        shared = prompting.encode_text_embeddings(toy, embeds, tokens, deep_prompts=deep)
        per_class = prompting.encode_text_embeddings(
            toy, embeds, tokens, deep_prompts=[p.expand(3, -1, -1) for p in deep]
        )
    assert torch.equal(shared, per_class)


def test_too_many_deep_text_prompts_is_an_error(toy):
    embeds, tokens = _toy_prompt_embeddings(toy)
    with pytest.raises(ValueError, match="deeper blocks"):
        prompting.encode_text_embeddings(toy, embeds, tokens, deep_prompts=_prompts(3, 128))
