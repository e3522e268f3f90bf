"""Example fewshot plugin: nearest class mean on frozen, L2-normalised image features.

Paper: the "prototype" baseline of Snell et al., Prototypical Networks (NeurIPS 2017), here
on frozen CLIP features. Official repository: none used. Deviations: none to speak of; it is
an example of the plugin route, not a method we report.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.types import AdapterConfig


@dataclass(frozen=True)
class PrototypesConfig(AdapterConfig):
    temperature: float = 100.0  # logit scale applied to cosine similarities


class Prototypes(Adapter):
    """Step 1 of 3: subclass Adapter with a frozen config dataclass."""

    config_cls = PrototypesConfig
    needs = Needs.FEATURES
    supports_novel = False

    def fit(self, ctx: FitContext) -> None:
        self.classnames = list(ctx.classnames)
        feats = F.normalize(ctx.train.features.float(), dim=-1)
        n = len(self.classnames)
        sums = torch.zeros(n, feats.shape[1]).index_add_(0, ctx.train.labels, feats)
        self.prototypes = F.normalize(sums, dim=-1).to(ctx.device)

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        if batch.classnames != self.classnames:
            raise ValueError("Prototypes can only classify the classes it was fitted on.")
        assert batch.features is not None
        feats = F.normalize(batch.features.float(), dim=-1)
        return self.config.temperature * feats @ self.prototypes.T

    def trainable_parameters(self) -> int:
        return int(self.prototypes.numel())
