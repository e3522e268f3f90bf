"""Text encoder forward + backward of C learned class prompts: shared prefix vs EOT cut vs all 77.

ViT-B-16 text tower (random weights: the cost of the OpenAI ones), M = 16 context vectors
shared by all classes (CoOp's few-shot setting), class token at the end, the first C ImageNet
class names (CLIP's). One call = text features of all C classes, then the gradient of a fixed
random projection of them with respect to the context, as a CoOp step needs.

- ``full77``: the official CoOp text encoder (trainers/coop.py ``TextEncoder``): the whole
  transformer over all 77 positions, written here;
- ``cut``: fewshot's path before shared prefixes: every prompt cut after the longest EOT;
- ``shared``: :func:`fewshot.prompting.encode_class_prompts` (the benchmarked call);
- ``one_group``: the shared prefix with all suffixes in one group (no length groups), to
  tell apart what sharing the prefix and grouping the suffixes each bring.

The two baselines run 100 classes per forward + backward (gradients accumulate; the same
work as one call): at C = 1000 their activations would not fit this machine's 23 GB.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from fewshot import prompting
from fewshot.prompting._shared import SharedPrefixPlan, encode_shared_prefix
from fewshot.prompting.text import project_text

from ._fixtures import classnames, random_backbone
from .conftest import interleaved

M = 16
CHUNK = 100  # classes per forward + backward of the baselines


@pytest.fixture(scope="module")
def vit_b16():
    backbone = random_backbone("ViT-B-16")
    return backbone, prompting.text_tower(backbone.model)


def _full77(tower: prompting.TextTower, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """CoOp's TextEncoder.forward: all positions, then the EOT (argmax) state, projected."""
    x = embeddings + tower.positional_embedding
    x = tower.transformer(x, attn_mask=tower.attn_mask)
    x = tower.ln_final(x)
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ tower.text_projection


def _chunked(encode: Callable[[slice], torch.Tensor], classes: int, weights: torch.Tensor) -> None:
    for start in range(0, classes, CHUNK):
        part = slice(start, start + CHUNK)
        (encode(part) * weights[part]).sum().backward()


def _one_group(tower, prompts, ctx: torch.Tensor) -> torch.Tensor:
    plan = prompting.shared_prefix_plan(tower, prompts, ctx)
    assert plan is not None
    rows = torch.arange(prompts.classes)
    single = SharedPrefixPlan(plan.length, ((rows, int(plan.pooled.max()) + 1),), plan.pooled, rows)
    words = plan.length - 1 - M
    prefix = torch.cat([prompts.prefix[:1], ctx.unsqueeze(0), prompts.suffix[:1, :words]], dim=1)
    hidden = encode_shared_prefix(
        tower.transformer, tower.positional_embedding, prefix, prompts.suffix[:, words:], single
    )
    return project_text(tower.text_projection, tower.ln_final(hidden))[0]


@pytest.mark.parametrize("classes", [10, 100, 1000])
def test_shared_prefix_text_forward_backward(benchmark, vit_b16, classes: int) -> None:
    backbone, tower = vit_b16
    prompts = prompting.build_class_prompts(backbone, tower, classnames(classes), M, " ".join(["X"] * M))
    ctx = torch.empty(M, 512).normal_(0, 0.02, generator=torch.Generator().manual_seed(0)).requires_grad_()
    weights = torch.randn(classes, 512, generator=torch.Generator().manual_seed(1))
    tokens = prompts.tokens

    def full77() -> None:
        _chunked(lambda p: _full77(tower, _embed(prompts, ctx, p), tokens[p]), classes, weights)

    def cut() -> None:
        _chunked(
            lambda p: prompting.encode_text_embeddings(tower, _embed(prompts, ctx, p), tokens[p]),
            classes,
            weights,
        )

    def shared() -> None:
        (prompting.encode_class_prompts(tower, prompts, ctx) * weights).sum().backward()

    def one_group() -> None:
        (_one_group(tower, prompts, ctx) * weights).sum().backward()

    # C = 1000: one call each (the baseline over all 77 positions takes minutes), no warm-up.
    big = classes >= 1000
    times = interleaved(
        benchmark,
        shared,
        {"full77_s": full77, "cut_s": cut, "one_group_s": one_group},
        rounds=1 if big else 3,
        warmup_rounds=0 if big else 1,
    )
    fast = times.pop("fast")
    baselines = times
    plan = prompting.shared_prefix_plan(tower, prompts, ctx)
    assert plan is not None
    ratios = {
        "speedup_vs_cut": baselines["cut_s"] / fast,
        "speedup_vs_full77": baselines["full77_s"] / fast,
        "one_group_speedup_vs_cut": baselines["cut_s"] / baselines["one_group_s"],
    }
    benchmark.extra_info.update(
        {
            **baselines,
            **ratios,
            "shared_s": fast,
            "classes": classes,
            "prefix_length": plan.length,
            "cut_length": prompting.cut_length(tower, tokens),
            "groups": [[len(rows), size] for rows, size in plan.groups],
        }
    )
    print(
        f"\nC={classes}: shared {fast:.3f}s; {ratios['speedup_vs_cut']:.1f}x vs EOT cut "
        f"({baselines['cut_s']:.3f}s), {ratios['speedup_vs_full77']:.1f}x vs all 77 "
        f"({baselines['full77_s']:.3f}s); one suffix group {baselines['one_group_s']:.3f}s "
        f"({ratios['one_group_speedup_vs_cut']:.1f}x vs cut); P={plan.length}, "
        f"groups {[[len(r), s] for r, s in plan.groups]}"
    )


def _embed(prompts: prompting.ClassPrompts, ctx: torch.Tensor, part: slice) -> torch.Tensor:
    """The prompt embeddings of classes ``part`` (CoOp's PromptLearner.forward, ``end``)."""
    rows = prompting.ClassPrompts(
        prompts.tokens[part], prompts.prefix[part], prompts.suffix[part], prompts.order[part]
    )
    return prompting.assemble_prompts(rows, ctx.unsqueeze(0).expand(rows.classes, -1, -1))
