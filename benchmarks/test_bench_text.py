"""Text encoding cut at the longest end-of-text position vs open_clip's full-length encode_text.

Model: a randomly initialised ViT-B-16 (the same text tower as the OpenAI weights; weights do
not change the cost). Prompts: 100 CoOp-style class-name prompts.
"""

from __future__ import annotations

import open_clip
import pytest
import torch

from fewshot.prompting import cut_length, encode_tokens

from .conftest import best_of

CLASSNAMES = [f"class {word} number {i}" for i, word in enumerate(["red", "green", "blue", "long"] * 25)]


@pytest.fixture(scope="module")
def vit_b16() -> tuple[torch.nn.Module, torch.Tensor]:
    model = open_clip.create_model("ViT-B-16", pretrained=None).eval()
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    tokens = tokenizer([f"a photo of a {name}." for name in CLASSNAMES])
    return model, tokens


def test_truncated_text_encoding_speedup(benchmark, vit_b16) -> None:
    model, tokens = vit_b16
    with torch.no_grad():
        full = best_of(lambda: model.encode_text(tokens))
        truncated = benchmark(lambda: encode_tokens(model, tokens))
        reference = model.encode_text(tokens)
    assert torch.allclose(truncated, reference, atol=1e-4)
    ratio = full / benchmark.stats.stats.min
    benchmark.extra_info.update(
        {"baseline_full_s": full, "speedup": ratio, "cut_length": cut_length(model, tokens), "context": 77}
    )
    print(f"\ntruncated text encoding: {ratio:.1f}x faster than full length ({full:.3f}s baseline)")
