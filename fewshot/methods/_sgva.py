"""SgVA-CLIP's pieces: the visual adapter, the pre-projection map, the losses, the init.

Kept apart from :mod:`fewshot.methods.sgva` (the Adapter, its config and training loop) so
each stays short; the tests check these pieces against independent computations.

- :class:`VisualProjection`: the frozen image tower's last linear map P (ViT: ``visual.proj``;
  ResNet: the attention pool's ``c_proj``, with its bias), its pseudo-inverse back to the
  pre-projection space, and P itself for the distillation student.
- :class:`VisualAdapter`: g = normalize(ReLU(α · W2 ReLU(W1 x) + (1 − α) · x)).
- :func:`prototypes`, :func:`soft_cross_entropy`, :func:`ensemble_context`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from fewshot.prompting import TextTower, embed_tokens
from fewshot.types import ConfigError, FewshotError

__all__ = [
    "VisualAdapter",
    "VisualProjection",
    "ensemble_context",
    "prototypes",
    "soft_cross_entropy",
]


class VisualProjection:
    """The image tower's final linear map between its pre-projection space (width d) and the
    joint space (dim D), as SgVA-CLIP reads it (models/coop_4.py ``CustomCLIP.forward``).

    ViT: f = x · proj, so x = f · pinv(proj). ResNet (open_clip ``ModifiedResNet``): the
    attention pool ends with ``c_proj`` (f = x · Wᵀ + b), so x = (f − b) · pinv(Wᵀ).
    ``to_joint`` applies the map forward (no normalisation), as the KD student does.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        self.weight = weight.detach().float()  # (d, D): f = x @ weight (+ bias)
        self.bias = None if bias is None else bias.detach().float()
        self.inverse = torch.linalg.pinv(self.weight)  # (D, d)

    @classmethod
    def of(cls, model: nn.Module) -> VisualProjection:
        """The projection of an open_clip model's image tower (ViT ``proj`` or ResNet
        attention-pool ``c_proj``); an error for towers without either."""
        visual = getattr(model, "visual", None)
        proj = getattr(visual, "proj", None)
        if isinstance(proj, torch.Tensor):
            return cls(proj, None)
        c_proj = getattr(getattr(visual, "attnpool", None), "c_proj", None)
        if isinstance(c_proj, nn.Linear):
            return cls(c_proj.weight.t(), c_proj.bias)
        raise FewshotError(
            "sgva-clip needs an image tower that ends in a linear projection (open_clip ViT "
            f"`visual.proj` or ResNet `visual.attnpool.c_proj`); {type(visual).__name__} has neither."
        )

    @property
    def width(self) -> int:
        """d, the pre-projection width (768 for ViT-B/16, 2048 for RN50)."""
        return int(self.weight.shape[0])

    def to(self, device: torch.device) -> VisualProjection:
        self.weight, self.inverse = self.weight.to(device), self.inverse.to(device)
        self.bias = None if self.bias is None else self.bias.to(device)
        return self

    def to_pre(self, features: torch.Tensor) -> torch.Tensor:
        """Raw joint-space image features (B, D) -> pre-projection features (B, d)."""
        x = features.float()
        if self.bias is not None:
            x = x - self.bias
        return x @ self.inverse

    def to_joint(self, hidden: torch.Tensor) -> torch.Tensor:
        """Pre-projection features (B, d) -> joint space (B, D), unnormalised."""
        out = hidden @ self.weight
        return out if self.bias is None else out + self.bias


class VisualAdapter(nn.Module):
    """Residual adapter in the pre-projection space (models/coop_4.py ``Weight_Adapter``,
    ``--adapter-dim _dim_x2``): h = W2 ReLU(W1 x), both without bias, hidden width 2d;
    g = ReLU(α h + (1 − α) x) with a learnable scalar α; the output is L2-normalised
    (``CustomCLIP.forward``)."""

    def __init__(self, width: int, hidden: int, alpha: float, generator: torch.Generator) -> None:
        super().__init__()
        self.linear1 = _seeded_linear(width, hidden, generator)
        self.linear2 = _seeded_linear(hidden, width, generator)
        self.alpha = nn.Parameter(torch.tensor(float(alpha)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.linear2(F.relu(self.linear1(x)))
        return F.normalize(F.relu(self.alpha * h + (1.0 - self.alpha) * x), dim=-1)


def _seeded_linear(fan_in: int, fan_out: int, generator: torch.Generator) -> nn.Linear:
    """A bias-free nn.Linear with PyTorch's default init (uniform ±1/sqrt(fan_in)), drawn
    from ``generator``."""
    layer = nn.Linear(fan_in, fan_out, bias=False, device="meta").to_empty(device="cpu")
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        layer.weight.uniform_(-bound, bound, generator=generator)
    return layer


def prototypes(features: torch.Tensor, labels: torch.Tensor, classes: int) -> torch.Tensor:
    """Per-class mean (classes, d) of ``features`` (N, d) by ``labels`` in 0..classes-1; the
    mean of normalised features is not renormalised (classification_heads_4.py)."""
    onehot = F.one_hot(labels, classes).to(features.dtype)  # (N, classes)
    counts = onehot.sum(0).clamp(min=1).unsqueeze(1)
    return (onehot.t() @ features) / counts


def soft_cross_entropy(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """−Σ_c softmax(teacher/τ)_c · log softmax(student/τ)_c, averaged over rows (main.py,
    loss ``newi2i+kd+i2t``); the teacher is detached."""
    target = F.softmax(teacher.detach().float() / temperature, dim=-1)
    return -(target * F.log_softmax(student.float() / temperature, dim=-1)).sum(-1).mean()


def ensemble_context(tower: TextTower, tokens: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """``--ctx-init ensemble`` (models/coop_4.py ``PromptLearner``): the token embeddings at
    positions 1..n_ctx of each template's ``tokens`` (T, L), the templates tokenised as
    written ("{}" included), averaged over the templates. (M, W)."""
    if not 1 <= n_ctx < tokens.shape[1] - 1:
        raise ConfigError(
            f"sgva-clip: the ensemble init needs 1 <= n_ctx < {tokens.shape[1] - 1}, got {n_ctx}."
        )
    with torch.no_grad():
        return embed_tokens(tower, tokens)[:, 1 : 1 + n_ctx].float().mean(0).cpu()
