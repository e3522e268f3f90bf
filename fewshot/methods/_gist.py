"""GIST's maths, apart from its pipeline (see :mod:`fewshot.methods.gist`).

- :func:`match_top_k`: each image against the descriptions of its own class only,
  softmax(100 · f·tᵀ) over them, the indices of the ``k`` best.
- :func:`contrastive_loss`: CLIP's symmetric InfoNCE of a batch of (image, caption) pairs,
  with pairs that show the same image kept out of each other's negatives.
- :func:`caption_passes`: which caption each support image takes in each pass of an epoch.
- :func:`train_probe`: GIST's linear probe (``nn.Linear`` with bias, plain SGD, the epoch
  of best val accuracy kept, later epochs winning ties).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshot.methods._training import seeded_linear

__all__ = [
    "ProbeResult",
    "caption_passes",
    "contrastive_loss",
    "match_top_k",
    "same_group_mask",
    "train_probe",
]

MATCH_SCALE = 100.0  # caption_matching.py's fixed logit scale


def match_top_k(
    image_features: torch.Tensor, labels: torch.Tensor, class_texts: Sequence[torch.Tensor], k: int
) -> list[list[int]]:
    """For image i, the indices (best first) of the ``k`` descriptions of class ``labels[i]``
    with the highest softmax(100 · f_i · t_jᵀ) over that class's descriptions; features are
    L2-normalised here. A class with fewer than ``k`` descriptions gives all of them."""
    images = F.normalize(image_features.float(), dim=-1)
    out: list[list[int]] = []
    for feature, label in zip(images, labels.tolist(), strict=True):
        texts = F.normalize(class_texts[label].float().to(feature.device), dim=-1)
        probs = (MATCH_SCALE * feature @ texts.t()).softmax(dim=-1)
        order = torch.argsort(probs, descending=True, stable=True)
        out.append(order[: min(k, len(texts))].tolist())
    return out


def same_group_mask(*keys: Sequence[str]) -> torch.Tensor:
    """(B, B) bool: True where two different rows share a value of any of ``keys`` (each a
    sequence of B strings, e.g. the rows' image ids and their caption texts)."""
    mask = torch.zeros(len(keys[0]), len(keys[0]), dtype=torch.bool)
    for values in keys:
        index = {g: i for i, g in enumerate(dict.fromkeys(values))}
        ids = torch.tensor([index[g] for g in values])
        mask |= ids[:, None] == ids[None, :]
    mask.fill_diagonal_(False)
    return mask


def contrastive_loss(
    image: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    groups: Sequence[str] | None = None,
    texts: Sequence[str] | None = None,
) -> torch.Tensor:
    """Mean of the image->text and text->image cross-entropies of the pairs (row i of
    ``image`` with row i of ``text``), on ``logit_scale`` · cosine logits. Pairs that are
    not true negatives of row i are masked out of its terms (both directions): with
    ``groups`` (one image id per row), the other captions of the same image; with ``texts``
    (the caption strings), the rows whose caption is the same string as row i's (another
    image of the class with the same caption, which would otherwise be row i's positive
    and a negative at once)."""
    image = F.normalize(image.float(), dim=-1)
    text = F.normalize(text.float(), dim=-1)
    logits = logit_scale.float() * image @ text.t()
    keys = [k for k in (groups, texts) if k is not None]
    if keys:
        logits = logits.masked_fill(same_group_mask(*keys).to(logits.device), float("-inf"))
    target = torch.arange(len(image), device=logits.device)
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def caption_passes(counts: Sequence[int], passes: int, generator: torch.Generator) -> list[list[int]]:
    """``[p][i]``: the caption index image i takes in pass p of one epoch. Each image uses
    its captions in a fresh random order; an image with fewer than ``passes`` captions
    starts over (so every image takes part in every pass)."""
    orders = [torch.randperm(n, generator=generator).tolist() for n in counts]
    return [[order[p % len(order)] for order in orders] for p in range(passes)]


@dataclass
class ProbeResult:
    """A trained probe: its weights (``weight``, ``bias``), kept epoch and val accuracy."""

    state: dict[str, torch.Tensor]
    epoch: int  # the kept epoch (1-based)
    val_accuracy: float


def _accuracy(layer: torch.nn.Linear, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((layer(x).argmax(dim=-1) == y).float().mean().item() * 100.0)


def train_probe(
    train: tuple[torch.Tensor, torch.Tensor],
    val: tuple[torch.Tensor, torch.Tensor],
    num_classes: int,
    *,
    lr: float,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
) -> ProbeResult:
    """GIST's linear_probe.py: ``nn.Linear`` (bias) on raw features, cross-entropy, SGD
    (no momentum, no weight decay), shuffled batches; val accuracy after every epoch, the
    weights of the best epoch kept (``>=``: a later epoch wins a tie)."""
    with torch.autocast(train[0].device.type, enabled=False):  # fp32, as GIST's probe
        x, y = train[0].float(), train[1]
        x_val, y_val = val[0].float(), val[1]
        layer = seeded_linear(x.shape[1], num_classes, generator).to(x.device)  # PyTorch's init
        optimizer = torch.optim.SGD(layer.parameters(), lr=lr)
        best = ProbeResult({k: v.detach().clone() for k, v in layer.state_dict().items()}, 0, -1.0)
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(x), generator=generator).to(x.device)
            for index in torch.split(order, batch_size):
                loss = F.cross_entropy(layer(x[index]), y[index])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()  # type: ignore[no-untyped-call]
                optimizer.step()
            accuracy = _accuracy(layer, x_val, y_val)
            if accuracy >= best.val_accuracy:
                best = ProbeResult(copy.deepcopy(layer.state_dict()), epoch, accuracy)
        return best
