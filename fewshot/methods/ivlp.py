"""IVLP: independent deep vision and language prompts (the baseline of PromptSRC and MaPLe).

Paper: the "Independent V-L prompting" baseline of Khattak, Rasheed, Maaz, Khan, Khan,
"MaPLe: Multi-modal Prompt Learning", CVPR 2023 (arXiv 2210.03117), and of Khattak,
Wasim, Naseer, Khan, Yang, Khan, "Self-regulating Prompts: Foundational Model Adaptation
without Forgetting", ICCV 2023 (arXiv 2307.06948; the README's IVLP row, 84.21 / 71.79 /
77.51 base / novel / HM). Official code: https://github.com/muzairkhattak/PromptSRC
(trainers/independentVL.py, clip/model.py ``ResidualAttentionBlock_IVLP`` and
``VisionTransformer.forward``, configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx.yaml).
Spec: docs/methods.md#ivlp (IVLP = PromptSRC's prompts without its regularisers and aggregation).

Prompts, learned with cross-entropy, both encoders frozen:
- text: a layer-0 context of 4 tokens initialised from "a photo of a" (the prompt is
  "a photo of a {class}."), and deep prompts of 4 tokens, N(0, 0.02²), that replace
  positions 1..4 before text blocks 1..J_t-1;
- vision: 4 tokens, N(0, 0.02²), appended after the patch tokens before ``ln_pre``, and deep
  prompts that replace the last 4 tokens before vision blocks 1..J_v-1;
- no coupling between the towers; J_t = J_v = 9.
SGD lr 0.0025 (momentum 0.9, weight decay 5e-4), batch 4, 20 epochs, cosine with one
constant warm-up epoch at 1e-5; the last-epoch prompts are kept.

Presets: the official repositories publish one IVLP config of this design, PromptSRC's
``vit_b16_c2_ep20_batch4_4+4ctx.yaml`` (base-to-novel), and it is used for every protocol:
``base2novel`` as published; ``fewshot`` is that config with K shots ("our config": no
few-shot IVLP config was published); ``cross-dataset`` and ``domain-generalization`` use it
as well, since no transfer config was published for IVLP (PromptSRC's own transfer config
lowers the depth to 3/3; ``--set depth_text=3 depth_vision=3`` reproduces that choice).
The MaPLe repository's IVLP configs (2+2 tokens, depth 12, 5 epochs, lr 0.0035; and a
language-only variant) are a different design and reachable with ``--set`` overrides.

Deviations from the official code:
- fp32 prompts under autocast (the original keeps CLIP and the prompts in fp16).
- The prompt depth is capped at each tower's number of blocks (the toy backbone has 3);
  the original would create prompts that are never used.
- A ``ctx_init`` with fewer tokens than ``n_ctx_text`` is an error; the original falls back
  to a random context when ``n_ctx > 4``, whatever the init words.
- Random draws come from the run's generator, in this order: deep text prompts, then vision
  prompts (layer 0 first); the original draws from the global RNG while building CLIP.
- Prompts longer than the text tower's context length are an error instead of being
  silently truncated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from fewshot.methods._deep import DeepPromptAdapter, DeepPromptConfig
from fewshot.methods.base import FitContext
from fewshot.prompting import TextTower, VisionTower, initial_context, normal_prompts, prompt_depth
from fewshot.types import ConfigError

__all__ = ["IVLP", "IVLPConfig", "IVLPPrompts"]


@dataclass(frozen=True)
class IVLPConfig(DeepPromptConfig):
    """IVLP hyper-parameters (defaults: PromptSRC configs/trainers/IVLP/vit_b16_c2_ep20_batch4_4+4ctx)."""

    n_ctx_text: int = 4
    n_ctx_vision: int = 4
    depth_text: int = 9  # layer 0 + blocks 1..8 of the text tower
    depth_vision: int = 9  # 0 = no vision prompts (language-only prompting)

    def __post_init__(self) -> None:
        self.check_training("ivlp")
        if self.depth_text < 1 or self.depth_vision < 0:
            raise ConfigError(
                f"ivlp needs depth_text >= 1 and depth_vision >= 0, got {self.depth_text} and "
                f"{self.depth_vision} (the original requires text prompts; use depth_vision=0 for text only)."
            )
        if self.n_ctx_text < 1 or self.n_ctx_vision < 1:
            raise ConfigError("ivlp needs n_ctx_text >= 1 and n_ctx_vision >= 1.")

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """The one published IVLP config for every protocol (see the module docstring)."""
        return {}


class IVLPPrompts(nn.Module):
    """Independent prompts: text context + deep text prompts, vision prompts (layer 0 first)."""

    def __init__(self, ctx: torch.Tensor, deep_text: list[torch.Tensor], vision: list[torch.Tensor]) -> None:
        super().__init__()
        self.ctx = nn.Parameter(ctx.float())
        self.deep_text = nn.ParameterList([nn.Parameter(p.float()) for p in deep_text])
        self.vision = nn.ParameterList([nn.Parameter(p.float()) for p in vision])


def build_ivlp_prompts(
    cfg: IVLPConfig, ctx: FitContext, text: TextTower, vision: VisionTower, method: str
) -> tuple[IVLPPrompts, str]:
    """The initial IVLP prompts for a backbone, and the prompt prefix (the init words)."""
    context, prefix = initial_context(
        ctx.backbone,
        text,
        cfg.ctx_init,
        cfg.n_ctx_text,
        init_std=cfg.init_std,
        generator=ctx.generator,
        method=method,
    )
    text_width = int(text.token_embedding.weight.shape[1])
    text_blocks = len(text.transformer.resblocks)  # type: ignore[arg-type]
    depth_text = prompt_depth(cfg.depth_text, text_blocks)
    depth_vision = prompt_depth(cfg.depth_vision, vision.layers)
    deep_text = normal_prompts(depth_text - 1, cfg.n_ctx_text, text_width, cfg.init_std, ctx.generator)
    visual = normal_prompts(depth_vision, cfg.n_ctx_vision, vision.width, cfg.init_std, ctx.generator)
    return IVLPPrompts(context, deep_text, visual), prefix


class IVLP(DeepPromptAdapter):
    """Independent vision-language prompting: deep prompts in both towers, no coupling."""

    config_cls = IVLPConfig
    method = "ivlp"
    config: IVLPConfig

    def _build_prompts(self, ctx: FitContext, text: TextTower, vision: VisionTower) -> nn.Module:
        prompts, self._prompt_prefix = build_ivlp_prompts(self.config, ctx, text, vision, self.method)
        return prompts

    def _text_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        assert isinstance(self.prompts, IVLPPrompts)
        return self.prompts.ctx, list(self.prompts.deep_text)

    def _vision_prompts(self) -> list[torch.Tensor]:
        assert isinstance(self.prompts, IVLPPrompts)
        return list(self.prompts.vision)
