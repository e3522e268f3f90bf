"""CoCoOp: CoOp's context shifted per image by a small meta-network (conditional prompts).

Paper: Zhou, Yang, Loy, Liu, "Conditional Prompt Learning for Vision-Language Models",
CVPR 2022 (arXiv 2203.05557). Official code: https://github.com/KaiyangZhou/CoOp
(trainers/cocoop.py, configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml,
scripts/cocoop/base2new_train.sh, scripts/cocoop/xd_train.sh). Spec: docs/methods.md#cocoop.

For an image with normalised feature f (dimension D), the meta-net
Linear(D -> D/16) -> ReLU -> Linear(D/16 -> W) (W: the text width, biases on) gives one
shift π(f); the context of this image is ctx_m + π(f) for every token m (the same shift for
all M tokens). The prompts ``[SOS][ctx + π(f)][class tokens][.][EOT]`` of all C classes are
encoded with this per-image context, so an image has its own C text features, and
logits = logit_scale · f · normalize(t_c(f)). Trained with cross-entropy; the learned
context and the meta-net are trained, both CLIP encoders are frozen.

Config (``CoCoOpConfig`` defaults = ``vit_b16_c4_ep10_batch1_ctxv1``, checked in the official
files): M = 4 from "a photo of a", SGD lr 0.002 (momentum 0.9, weight decay 5e-4), batch 1,
10 epochs, cosine schedule with one constant warm-up epoch at 1e-5, the last epoch kept.

Presets: the official code publishes one config; its base-to-novel and cross-dataset
scripts (16 shots; the ImageNet model of the latter is also the one evaluated for domain
generalisation) both use it, so ``base2novel``, ``cross-dataset`` and
``domain-generalization`` use it unchanged. ``fewshot``: the CoCoOp repository publishes no
K-shot config or script (scripts/cocoop/ holds base-to-novel and cross-dataset scripts
only), so K-shot runs use the same config with K shots on all classes, the closest
published setting; label the results "our config".

Settings beyond the official ones: ``meta_reduction`` (the meta-net's D // 16, kept at 16)
and ``predict_chunk`` (memory bound of batched evaluation, below).

Cost: training encodes C prompts per image per step (batch x classes sequences through the
text tower), and so does evaluation, per query image. ``extra_costs()`` reports the number of
prompt sequences run through the text tower (``text_prompts_encoded``, fit and predict;
``text_prompts_encoded_fit``, fit only), which the runner adds to every record's costs.

Deviations from the official code:
- Training runs by default on cached image features of V augmented views per support image
  (epoch e uses view e mod V; ``--aug-views online`` encodes freshly augmented images each
  step, as the original). The image encoder is frozen and unprompted and the meta-net reads
  its output, so both paths train the same model on the same kind of data.
- fp32 context and meta-net under autocast (the original keeps CLIP, the context and the
  meta-net in fp16).
- The meta-net's initial weights are drawn from the run's seeded generator, with the same
  distribution as PyTorch's default ``nn.Linear`` init the original uses.
- Evaluation batches query images: the prompts of several images (``predict_chunk``
  sequences at most) go through the text tower in one call, where the original loops over
  the images of each test batch one at a time. Same logits, up to float rounding.
- With ``ctx_init``, M is the number of *tokens* of the init text (the original counts
  words; they differ only when a word splits into several BPE tokens).
- Prompts longer than the text tower's context length are an error instead of being
  silently truncated.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.methods._training import SGDConfig, fit_sgd, seeded_linear, train_batches
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.prompting import (
    ClassPrompts,
    PromptBuilder,
    TextTower,
    encode_class_prompts,
    initial_context,
    text_tower,
)
from fewshot.types import AdapterConfig, ConfigError, FewshotError
from fewshot.workload import StepCost, prompts_with

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = ["CoCoOp", "CoCoOpConfig", "ConditionalPromptLearner", "meta_net"]


@dataclass(frozen=True)
class CoCoOpConfig(SGDConfig):
    """CoCoOp hyper-parameters (defaults: configs/trainers/CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml)."""

    epochs: int = 10
    batch_size: int = 1
    n_ctx: int = 4  # context length M; ignored when ctx_init is set (M = its token count)
    ctx_init: str = "a photo of a"  # "" = random N(0, init_std²) context of n_ctx tokens
    meta_reduction: int = 16  # meta-net hidden size = D // meta_reduction
    predict_chunk: int = 2048  # most prompt sequences (images x classes) per text-tower call in predict

    def __post_init__(self) -> None:
        if self.n_ctx < 1:
            raise ConfigError(f"cocoop needs n_ctx >= 1, got {self.n_ctx}.")
        self.check_training("cocoop")
        if self.meta_reduction < 1 or self.predict_chunk < 1:
            raise ConfigError(
                f"cocoop needs meta_reduction >= 1 and predict_chunk >= 1, got {self.meta_reduction} "
                f"and {self.predict_chunk}."
            )

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """The one published config for every protocol and dataset (see the module docstring)."""
        return {}


def meta_net(in_dim: int, hidden: int, out_dim: int, generator: torch.Generator) -> nn.Sequential:
    """Linear(in -> hidden) -> ReLU -> Linear(hidden -> out), biases on, initialised as
    PyTorch's default ``nn.Linear`` (weights and biases U(-1/√fan_in, 1/√fan_in)) from
    ``generator``."""
    first, second = seeded_linear(in_dim, hidden, generator), seeded_linear(hidden, out_dim, generator)
    return nn.Sequential(first, nn.ReLU(), second)


class ConditionalPromptLearner(nn.Module):
    """The learned context (M, W) and the meta-net that shifts it per image."""

    def __init__(self, ctx: torch.Tensor, net: nn.Module) -> None:
        super().__init__()
        self.ctx = nn.Parameter(ctx.float())
        self.meta_net = net

    def contexts(self, image: torch.Tensor) -> torch.Tensor:
        """Per-image contexts (B, M, W) = ctx + meta_net(image) for normalised features (B, D)."""
        shift: torch.Tensor = self.meta_net(image)  # (B, W): one shift per image, shared by the M tokens
        return self.ctx.unsqueeze(0) + shift.unsqueeze(1)

    def class_contexts(self, image: torch.Tensor, classes: int) -> torch.Tensor:
        """The context of every (image, class) prompt (B, C, M, W): each image's context,
        shared by the prompts of all ``classes`` classes (a view, no copy)."""
        return self.contexts(image).unsqueeze(1).expand(-1, classes, -1, -1)


class CoCoOp(Adapter):
    """Conditional Context Optimization: a context shifted per image by a meta-net."""

    config_cls = CoCoOpConfig
    needs = Needs.FEATURES  # the image encoder is frozen; the meta-net reads its cached output
    supports_novel = True
    config: CoCoOpConfig

    def __init__(self, config: CoCoOpConfig | None = None) -> None:
        super().__init__(config)
        self.backbone: Backbone | None = None
        self.learner: ConditionalPromptLearner | None = None
        self.classnames: list[str] = []
        self.prompts_for: PromptBuilder | None = None  # class names -> frozen prompt buffers
        self._autocast: Callable[[], AbstractContextManager[Any]] = nullcontext
        self._tower: TextTower | None = None
        self._encoded = {"fit": 0, "predict": 0}  # prompt sequences run through the text tower

    @classmethod
    def step_cost(cls, config: AdapterConfig, classnames: list[str], online: bool) -> StepCost:
        """Every class prompt once per image of the batch (each image has its own context)."""
        assert isinstance(config, CoCoOpConfig)
        prompts = prompts_with(config.ctx_init, config.n_ctx, classnames)
        images = config.batch_size if online else 0
        return StepCost(prompts, prompt_repeats=config.batch_size, images=images, reads_views=True)

    def fit(self, ctx: FitContext) -> None:
        """Train the context and the meta-net for ``epochs`` epochs; keep the last one."""
        cfg = self.config
        self.backbone, self.classnames, self._autocast = ctx.backbone, list(ctx.classnames), ctx.autocast
        self._tower = text_tower(ctx.backbone.model)
        self._encoded = {"fit": 0, "predict": 0}
        self.learner, prefix = self._build_learner(ctx)
        self.learner.to(ctx.device)
        n_ctx = int(self.learner.ctx.shape[0])
        self.prompts_for = PromptBuilder(ctx.backbone, self._tower, n_ctx, prefix)
        prompts = self.prompts_for(self.classnames)
        fit_sgd(
            ctx,
            self.learner.parameters(),
            cfg,
            "CoCoOp",
            lambda epoch: train_batches(ctx, epoch, cfg.batch_size),
            lambda features, labels: F.cross_entropy(
                self._conditional_logits(features, prompts, "fit").float(), labels
            ),
        )

    def _build_learner(self, ctx: FitContext) -> tuple[ConditionalPromptLearner, str]:
        """Initial context (M, W) and meta-net D -> D // meta_reduction -> W; the prompt prefix."""
        cfg, tower = self.config, self._tower
        assert tower is not None
        vectors, prefix = initial_context(
            ctx.backbone,
            tower,
            cfg.ctx_init,
            None if cfg.ctx_init.strip() else cfg.n_ctx,  # with init words, M = their token count
            init_std=cfg.init_std,
            generator=ctx.generator,
            method="cocoop",
        )
        dim, width = ctx.backbone.embed_dim, int(vectors.shape[-1])
        hidden = dim // cfg.meta_reduction
        if hidden < 1:
            raise FewshotError(
                f"CoCoOp's meta-net hidden size D // meta_reduction is {dim} // {cfg.meta_reduction} = 0 "
                f"for this backbone: set meta_reduction to at most {dim}."
            )
        return ConditionalPromptLearner(vectors, meta_net(dim, hidden, width, ctx.generator)), prefix

    def _conditional_text(self, image: torch.Tensor, prompts: ClassPrompts, phase: str) -> torch.Tensor:
        """Unnormalised text features (B, C, D) for normalised image features (B, D): every
        class's prompt under each image's context, all B·C sequences in one pass of the text
        tower (counted under ``phase``)."""
        assert self.learner is not None and self._tower is not None
        contexts = self.learner.class_contexts(image, prompts.classes)  # (B, C, M, W)
        self._encoded[phase] += int(contexts.shape[0]) * prompts.classes
        return encode_class_prompts(self._tower, prompts, contexts)

    def _conditional_logits(self, features: torch.Tensor, prompts: ClassPrompts, phase: str) -> torch.Tensor:
        assert self.backbone is not None
        image = F.normalize(features.float(), dim=-1)  # the meta-net reads the normalised feature
        text = F.normalize(self._conditional_text(image, prompts, phase).float(), dim=-1)
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", image, text)

    def text_features(self, features: torch.Tensor, classnames: list[str]) -> torch.Tensor:
        """L2-normalised text features (B, C, D) of ``classnames`` conditioned on each image."""
        if self.learner is None:
            raise FewshotError("CoCoOp.text_features called before fit(): call fit(ctx) first.")
        image = F.normalize(features.float(), dim=-1)
        with torch.no_grad(), self._autocast():
            text = self._conditional_text(image, self._prompts(classnames), "predict")
        return F.normalize(text.float(), dim=-1)

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """logit_scale · cos(image, each class's prompt conditioned on that image).

        Images are processed in chunks of ``predict_chunk // C`` (at least one), so one
        text-tower call holds at most ``predict_chunk`` prompt sequences (or C, if more).
        """
        if self.learner is None:
            raise FewshotError("CoCoOp.predict called before fit(): call fit(ctx) first.")
        if batch.features is None:
            raise FewshotError("CoCoOp needs image features in the QueryBatch (Needs.FEATURES).")
        if len(batch.features) == 0:
            return batch.features.new_zeros(0, len(batch.classnames))
        prompts = self._prompts(batch.classnames)
        per_call = max(1, self.config.predict_chunk // len(batch.classnames))
        logits = []
        with torch.no_grad(), self._autocast():
            for chunk in batch.features.split(per_call):
                logits.append(self._conditional_logits(chunk, prompts, "predict").float())
        return torch.cat(logits)

    def _prompts(self, classnames: list[str]) -> ClassPrompts:
        assert self.prompts_for is not None
        return self.prompts_for(classnames)

    def trainable_parameters(self) -> int:
        """The context (M·W) plus the meta-net's weights and biases."""
        return 0 if self.learner is None else sum(p.numel() for p in self.learner.parameters())

    def extra_costs(self) -> dict[str, float]:
        """Prompt sequences run through the text tower: fit + predict, and fit alone."""
        return {
            "text_prompts_encoded": float(self._encoded["fit"] + self._encoded["predict"]),
            "text_prompts_encoded_fit": float(self._encoded["fit"]),
        }
