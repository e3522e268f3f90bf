"""MaPLe: multi-modal prompt learning, vision prompts coupled to deep language prompts.

Paper: Khattak, Rasheed, Maaz, Khan, Khan, "MaPLe: Multi-modal Prompt Learning", CVPR 2023
(arXiv 2210.03117). Official code: https://github.com/muzairkhattak/multimodal-prompt-learning
(trainers/maple.py, clip/model.py ``ResidualAttentionBlock_MaPLe`` and
``VisionTransformer_MaPLe.forward``, configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml
and ``..._cross_datasets.yaml``). Spec: docs/methods.md#maple.

Learned, with cross-entropy, both encoders frozen (prompt depth J = 9, n = 2 tokens):
- the layer-0 text context, initialised from the first two tokens of "a photo of a"; the
  tokenised prompt stays "a photo of a {class}.", so "of a" follows the learned tokens;
- J-1 deep text prompts, N(0, 0.02²), that replace positions 1..2 before text blocks 1..J-1;
- J couplings: ``proj``, Linear(W_text -> W_vision), maps the layer-0 context to the 2 vision
  tokens appended after the patch tokens before ``ln_pre``; J-1 deeper Linear(W_text ->
  W_vision) map each deep text prompt to the vision prompt that replaces the last 2 tokens
  before vision block j. The deeper couplings start as copies of ONE randomly initialised
  Linear (the original's ``_get_clones``), so they start identical.
SGD (momentum 0.9, weight decay 5e-4), batch 4, cosine with one constant warm-up epoch at
1e-5; the last-epoch prompts are kept.

Presets (``MaPLeConfig.preset``):
- ``base2novel``: ``vit_b16_c2_ep5_batch4_2ctx``: depth 9, lr 0.0035, 5 epochs.
- ``fewshot``: no MaPLe few-shot config was published (docs/methods.md#maple); "our config" is
  the base-to-novel config with K shots on all classes.
- ``cross-dataset`` and ``domain-generalization``: ``vit_b16_c2_ep5_batch4_2ctx_cross_datasets``:
  depth 3, lr 0.0026, 2 epochs.

Deviations from the official code:
- fp32 prompts and couplings under autocast (the original keeps them in fp16).
- The prompt depth is capped at the smaller tower's number of blocks (the toy backbone has
  3); the original would create deep prompts and couplings that are never used.
- The couplings map to the backbone's vision width (the original hard-codes 768 and the
  deep text prompt width 512, the ViT-B/16 sizes).
- A ``ctx_init`` with fewer tokens than ``n_ctx`` is an error; the original falls back to a
  random context when ``n_ctx > 4``, whatever the init words.
- Random draws come from the run's generator, in this order: deep text prompts, ``proj``,
  then the one Linear the deeper couplings copy; the original draws from the global RNG.
- Prompts longer than the text tower's context length are an error instead of being
  silently truncated.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewshot.methods._deep import DeepPromptAdapter, DeepPromptConfig
from fewshot.methods._training import seeded_linear
from fewshot.methods.base import FitContext
from fewshot.prompting import TextTower, VisionTower, initial_context, normal_prompts, prompt_depth
from fewshot.types import ConfigError

__all__ = ["MaPLe", "MaPLeConfig", "MaPLePrompts"]


@dataclass(frozen=True)
class MaPLeConfig(DeepPromptConfig):
    """MaPLe hyper-parameters (defaults: configs/trainers/MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml)."""

    n_ctx: int = 2
    depth: int = 9  # layer 0 + blocks 1..8 of both towers
    epochs: int = 5
    lr: float = 0.0035

    def __post_init__(self) -> None:
        self.check_training("maple")
        if self.n_ctx < 1 or self.depth < 1:
            raise ConfigError(f"maple needs n_ctx >= 1 and depth >= 1, got {self.n_ctx} and {self.depth}.")

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """The official configs per protocol (see the module docstring)."""
        if protocol in ("cross-dataset", "domain-generalization"):
            return {"depth": 3, "lr": 0.0026, "epochs": 2}
        return {}


class MaPLePrompts(nn.Module):
    """The text context, the deep text prompts, and the language-to-vision couplings."""

    def __init__(
        self, ctx: torch.Tensor, deep_text: list[torch.Tensor], proj: nn.Linear, couplings: list[nn.Linear]
    ) -> None:
        super().__init__()
        if len(couplings) != len(deep_text):
            raise ValueError(
                f"{len(deep_text)} deep text prompts need as many couplings, got {len(couplings)}."
            )
        self.ctx = nn.Parameter(ctx.float())
        self.deep_text = nn.ParameterList([nn.Parameter(p.float()) for p in deep_text])
        self.proj = proj
        self.couplings = nn.ModuleList(couplings)

    def vision(self) -> list[torch.Tensor]:
        """Vision prompts: proj(ctx) at layer 0, then coupling_j(deep text prompt j)."""
        deeper = [coupling(p) for coupling, p in zip(self.couplings, self.deep_text, strict=True)]
        return [self.proj(self.ctx), *deeper]


class MaPLe(DeepPromptAdapter):
    """Multi-modal prompt learning: deep text prompts drive the vision prompts."""

    config_cls = MaPLeConfig
    method = "maple"
    config: MaPLeConfig

    def _build_prompts(self, ctx: FitContext, text: TextTower, vision: VisionTower) -> nn.Module:
        cfg = self.config
        context, self._prompt_prefix = initial_context(
            ctx.backbone,
            text,
            cfg.ctx_init,
            cfg.n_ctx,
            init_std=cfg.init_std,
            generator=ctx.generator,
            method=self.method,
        )
        text_width = int(text.token_embedding.weight.shape[1])
        text_blocks = len(text.transformer.resblocks)  # type: ignore[arg-type]
        depth = prompt_depth(cfg.depth, min(text_blocks, vision.layers))
        deep_text = normal_prompts(depth - 1, cfg.n_ctx, text_width, cfg.init_std, ctx.generator)
        proj = seeded_linear(text_width, vision.width, ctx.generator)
        single = seeded_linear(text_width, vision.width, ctx.generator)
        couplings = [copy.deepcopy(single) for _ in range(depth - 1)]  # identical at the start
        return MaPLePrompts(context, deep_text, proj, couplings)

    def _text_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        assert isinstance(self.prompts, MaPLePrompts)
        return self.prompts.ctx, list(self.prompts.deep_text)

    def _vision_prompts(self) -> list[torch.Tensor]:
        assert isinstance(self.prompts, MaPLePrompts)
        return self.prompts.vision()
