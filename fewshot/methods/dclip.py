"""DCLIP: classify by the mean similarity to a class's LLM descriptors.

Paper: Menon & Vondrick, "Visual Classification via Description from Large Language
Models", ICLR 2023 (arXiv 2210.07183). Official code:
https://github.com/sachit-menon/classify_by_description_release, commit d1a3d892 (files
read: load.py, descriptor_strings.py, loading_helpers.py, main.py).
Spec: docs/methods.md#dclip.

Algorithm as implemented:
- For class c with descriptors d_1..d_n (the run's description set), the strings are
  "{c}, {phrase(d_i)}{after}" (load.py: ``category_name_inclusion = 'prepend'``,
  ``between_text = ', '``, ``before_text = ''``; loading_helpers.load_gpt_descriptions
  builds ``before + wordify(c) + between + modify_descriptor(d) + after``). ``wordify``
  turns "_" into spaces; descriptors are used as written (no lower-casing).
- phrase(d) (descriptor_strings.make_descriptor_sentence), tested in this order:
  ``d.startswith('a') or d.startswith('an')`` → "which is d"; starts with has / often /
  typically / may / can → "which d"; starts with "used" → "which is d"; else "which has d".
  The first test is a prefix test on the letter "a", so "arched beak" becomes "which is
  arched beak": kept for parity.
- ``after`` is "." on ImageNet only (load.py sets ``after_text = label_after_text = '.'``
  in its ImageNet branch), "" elsewhere; the preset writes it into the config.
- A class with no descriptor gets one empty descriptor (load_gpt_descriptions replaces an
  empty list by ``['']``), i.e. "{c}, which has ".
- score_c(x) = mean_i cos(x, normalize(E_text(s_{c,i}))) (main.py: ``aggregate_similarity``
  with 'mean' over the image-descriptor dot products of normalised features).
- ``baseline=True``: the same script's CLIP baseline, the bare class name
  ("{wordify(c)}{after}", no template).

Logits: predict returns ``logit_scale · score_c(x)``. The official code has no logit
scale (it takes the softmax of the raw mean cosine for its accuracy metric, and argmax for
predictions); accuracy is invariant to a positive scale, and scaling puts DCLIP's logits on
the same footing as zero-shot CLIP's for any harness metric that reads probabilities.

Deviations from the official code:
- Descriptors come from the run's description set (``descriptions`` config: "dclip" =
  the published files, "toy" = the toy world's own), matched to the dataset's class names
  by the loader; the original reads ``descriptors/descriptors_<ds>.json`` keyed by its own
  class names.
- Text features come from our backbone's tokenizer, which truncates over-long strings
  (OpenAI's ``clip.tokenize`` raises instead); DCLIP strings are short, so this rarely
  matters.
- Image features are the harness's cached features (CLIP preprocessing), not DCLIP's
  own loader transforms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from fewshot.methods._knowledge import TextCache, knowledge_set, set_preset
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.types import AdapterConfig, FewshotError

if TYPE_CHECKING:
    from fewshot.backbones import Backbone
    from fewshot.descriptions import DescriptionSet

__all__ = ["DCLIP", "DCLIPConfig", "dclip_strings", "descriptor_phrase"]

_WHICH = ("has", "often", "typically", "may", "can")


def descriptor_phrase(descriptor: str) -> str:
    """DCLIP's make_descriptor_sentence: "which is/which/which has" + the descriptor as written."""
    if descriptor.startswith("a") or descriptor.startswith("an"):  # the letter "a": DCLIP's quirk
        return f"which is {descriptor}"
    if descriptor.startswith(_WHICH):
        return f"which {descriptor}"
    if descriptor.startswith("used"):
        return f"which is {descriptor}"
    return f"which has {descriptor}"


def dclip_strings(classname: str, descriptors: tuple[str, ...], after: str = "") -> list[str]:
    """The strings DCLIP encodes for one class ("{c}, {phrase(d)}{after}" per descriptor)."""
    name = classname.replace("_", " ")
    return [f"{name}, {descriptor_phrase(d)}{after}" for d in (descriptors or ("",))]


@dataclass(frozen=True)
class DCLIPConfig(AdapterConfig):
    """DCLIP settings (the preset names the description set and ImageNet's trailing ".")."""

    descriptions: str = ""  # description set name; "" = none (then the class-name baseline)
    after: str = ""  # appended to every string: "." on ImageNet (DCLIP's load.py)
    baseline: bool = False  # class name only, no descriptors (DCLIP's CLIP baseline)

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """The toy world's own set on toy datasets, DCLIP's published set elsewhere."""
        values: dict[str, Any] = {"descriptions": set_preset(dataset, "dclip")}
        if dataset == "imagenet":
            values["after"] = "."
        return values


class DCLIP(Adapter):
    """Classification by description: mean cosine to a class's descriptor sentences."""

    config_cls = DCLIPConfig
    needs = Needs.FEATURES
    supports_novel = True  # description sets cover every class of the dataset
    uses_support = False  # training-free: one result per (dataset, seed)
    knowledge: ClassVar[tuple[str, ...]] = ("descriptions",)
    config: DCLIPConfig

    def __init__(self, config: DCLIPConfig | None = None) -> None:
        super().__init__(config)
        self.backbone: Backbone | None = None
        self.cache: TextCache | None = None

    @classmethod
    def knowledge_read(cls, config: AdapterConfig) -> tuple[str, ...]:
        """The class-name baseline reads no set (nothing to load, record or check)."""
        return () if getattr(config, "baseline", False) else cls.knowledge

    def fit(self, ctx: FitContext) -> None:
        """Nothing to learn: remember the backbone and check the set covers the classes."""
        self.backbone = ctx.backbone
        self.cache = TextCache(ctx.backbone)
        self.class_strings(ctx.classnames, ctx.descriptions)  # fail early on a missing class

    def class_strings(self, classnames: list[str], given: DescriptionSet | None) -> list[list[str]]:
        """The strings of each class: descriptor sentences, or the class name (baseline / no set)."""
        if self.config.baseline:  # reads no set (knowledge_read)
            return [[name.replace("_", " ") + self.config.after] for name in classnames]
        chosen = knowledge_set("dclip", "descriptions", self.config.descriptions, given)
        if chosen is None:
            return [[name.replace("_", " ") + self.config.after] for name in classnames]
        return [
            dclip_strings(c, d, self.config.after)
            for c, d in zip(classnames, chosen.sentences(classnames), strict=True)
        ]

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """logit_scale · mean_i cos(image, descriptor string i of class c)."""
        if self.backbone is None or self.cache is None:
            raise FewshotError("DCLIP.predict called before fit(): call fit(ctx) first.")
        if batch.features is None:
            raise FewshotError("DCLIP needs image features in the QueryBatch (Needs.FEATURES).")
        groups = self.class_strings(batch.classnames, batch.descriptions)
        text = self.cache([s for group in groups for s in group]).to(batch.features.device)
        image = F.normalize(batch.features.float(), dim=-1)
        sims = image @ text.t()  # (B, total strings)
        owner = torch.repeat_interleave(
            torch.arange(len(groups), device=sims.device),
            torch.tensor([len(g) for g in groups], device=sims.device),
        )
        total = torch.zeros(sims.shape[0], len(groups), device=sims.device).index_add_(1, owner, sims)
        counts = torch.tensor([len(g) for g in groups], device=sims.device, dtype=sims.dtype)
        return self.backbone.logit_scale * total / counts

    def extra_costs(self) -> dict[str, float]:
        """Distinct strings run through the text encoder."""
        return {"prompts_encoded": float(self.cache.encoded if self.cache else 0)}
