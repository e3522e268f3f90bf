"""The truncated text tower: exact against open_clip's encode_text, gradients, helpers."""

from __future__ import annotations

import logging

import open_clip
import pytest
import torch
from torch import nn

from fewshot import prompting
from fewshot.toyworld import TOY_MODEL_DIR

TINY_CFG = {
    "embed_dim": 48,
    "vision_cfg": {"image_size": 32, "patch_size": 8, "layers": 2, "width": 64, "head_width": 32},
    "text_cfg": {"context_length": 24, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}

PROMPTS = [
    "a photo of a dog.",
    "x",
    "",
    "a photo of a small red car with four round wheels, parked next to a tall green tree.",
    "a photo of a golden retriever, a type of pet. " * 8,  # longer than any context: EOT at the end
    "itap of a !",  # id 0 is "!" in CLIP's vocabulary, the same id as padding
]

EOT_ID = 49407  # the end-of-text id of open_clip's SimpleTokenizer (the largest id)


@pytest.fixture(autouse=True)
def _quiet_open_clip():
    # open_clip logs a warning for every randomly initialised model.
    logging.disable(logging.WARNING)
    yield
    logging.disable(logging.NOTSET)


def _eval(model: nn.Module) -> nn.Module:
    return model.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def vit_b16() -> tuple[nn.Module, object]:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-16", pretrained=None)
    return _eval(model), open_clip.get_tokenizer("ViT-B-16")


@pytest.fixture(scope="module")
def tiny() -> tuple[nn.Module, object]:
    torch.manual_seed(1)
    model = open_clip.CLIP(**TINY_CFG)
    return _eval(model), open_clip.SimpleTokenizer(context_length=24)


def _toy() -> tuple[nn.Module, object]:
    if not (TOY_MODEL_DIR / "open_clip_model.safetensors").is_file():
        pytest.skip("the toy checkpoint has not been built yet")
    model = open_clip.create_model(f"local-dir:{TOY_MODEL_DIR}")
    return _eval(model), open_clip.get_tokenizer(f"local-dir:{TOY_MODEL_DIR}")


@pytest.fixture(params=["vit_b16", "tiny", "toy", "tiny_custom_text"])
def model_and_tokenizer(request):
    if request.param == "toy":
        return _toy()
    if request.param == "tiny_custom_text":  # CustomTextCLIP with open_clip's own TextTransformer
        torch.manual_seed(2)
        model = open_clip.CustomTextCLIP(**TINY_CFG)
        return _eval(model), open_clip.SimpleTokenizer(context_length=24)
    return request.getfixturevalue(request.param)


def test_truncated_encoding_equals_open_clip(model_and_tokenizer):
    model, tokenizer = model_and_tokenizer
    tokens = tokenizer(PROMPTS)
    with torch.no_grad():
        expected = model.encode_text(tokens)
        got = prompting.encode_tokens(model, tokens)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() < 1e-4


def test_cut_is_after_the_longest_eot(vit_b16):
    model, tokenizer = vit_b16
    tokens = tokenizer(["a photo of a dog.", "a photo of a big cat."])
    # Independent count: SOS + words + "." + EOT; the longest prompt has 7 tokens + SOS + EOT.
    longest = max(row.tolist().index(EOT_ID) for row in tokens) + 1
    assert prompting.cut_length(model, tokens) == longest == 9
    assert prompting.cut_length(model, tokenizer(PROMPTS)) == 77  # one prompt fills the context


def test_embeddings_path_equals_encode_text_and_gets_gradients(tiny):
    model, tokenizer = tiny
    tokens = tokenizer(["a photo of a dog.", "x", "a photo of a small red car."])
    embeds = prompting.embed_tokens(model, tokens).clone().requires_grad_(True)
    out = prompting.encode_text_embeddings(model, embeds, tokens)
    with torch.no_grad():
        expected = model.encode_text(tokens)
    assert (out - expected).abs().max().item() < 1e-5
    out.square().sum().backward()
    assert embeds.grad is not None
    eot = tokens.argmax(dim=-1)
    for row, last in enumerate(eot.tolist()):
        # Every position up to this row's EOT influences it; nothing after it does (causal).
        assert embeds.grad[row, : last + 1].abs().sum(dim=-1).min() > 0
        assert embeds.grad[row, last + 1 :].abs().sum() == 0


def test_learned_context_changes_output_padding_does_not(tiny):
    model, tokenizer = tiny
    tokens = tokenizer(["X X X X dog.", "X X X X big cat."])
    base = prompting.embed_tokens(model, tokens)
    ctx = torch.randn(4, base.shape[-1])
    prompts = torch.cat([base[:, :1], ctx.expand(2, -1, -1), base[:, 5:]], dim=1)
    with torch.no_grad():
        plain = prompting.encode_text_embeddings(model, base, tokens)
        learned = prompting.encode_text_embeddings(model, prompts, tokens)
        noisy_pad = prompts.clone()
        noisy_pad[:, 12:] += torch.randn_like(noisy_pad[:, 12:])  # beyond the longest EOT (9)
        padded = prompting.encode_text_embeddings(model, noisy_pad, tokens)
    assert (plain - learned).abs().max() > 1e-3
    assert torch.equal(learned, padded)


def test_shape_mismatch_is_an_error(tiny):
    model, tokenizer = tiny
    tokens = tokenizer(["a dog"])
    with pytest.raises(ValueError, match="disagree"):
        prompting.encode_text_embeddings(model, torch.zeros(1, 5, 64), tokens)


def test_content_token_lengths(tiny):
    model, tokenizer = tiny
    names = ["dog", "golden retriever", "Abyssinian cat", "x"]
    expected = [len(tokenizer.encode(name.lower())) for name in names]
    got = prompting.content_token_lengths(model, tokenizer(names)).tolist()
    assert got == expected
    assert expected[1] == 2  # sanity of the independent count


def test_eos_pooling_finds_the_eos_id(tiny):
    model, _ = tiny
    tower = prompting.text_tower(model)
    eos_tower = prompting.TextTower(**{**tower.__dict__, "pool_type": "eos", "eos_id": 7})
    tokens = torch.tensor([[1, 9, 7, 0, 0], [1, 7, 9, 9, 0]])
    assert prompting.eot_index(eos_tower, tokens).tolist() == [2, 1]
    assert prompting.cut_length(eos_tower, tokens) == 3


def test_tower_without_causal_mask_is_not_cut(tiny):
    model, tokenizer = tiny
    tower = prompting.text_tower(model)
    bidirectional = prompting.TextTower(**{**tower.__dict__, "attn_mask": None})
    tokens = tokenizer(["a dog"])
    assert prompting.cut_length(bidirectional, tokens) == tokens.shape[1]


class _HFLikeCLIP(nn.Module):
    """A stand-in for a CLIP whose text tower is not open_clip's (e.g. a Hugging Face model)."""

    def __init__(self) -> None:
        super().__init__()
        self.text = nn.Linear(3, 4)

    def encode_text(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens.float()[:, :4] * 2


def test_non_standard_text_tower():
    model = _HFLikeCLIP()
    tokens = torch.tensor([[5, 6, 7, 8, 9], [1, 2, 3, 4, 0]])
    with pytest.raises(prompting.UnsupportedTextTowerError, match="not open_clip's standard"):
        prompting.text_tower(model)
    with pytest.raises(prompting.UnsupportedTextTowerError):
        prompting.encode_text_embeddings(model, torch.zeros(2, 5, 3), tokens)
    # Plain encoding falls back to the model's own encode_text, untruncated.
    assert torch.equal(prompting.encode_tokens(model, tokens), tokens.float()[:, :4] * 2)
