"""GIST: image-specific captions, contrastive fine-tuning of CLIP, and a linear probe.

Paper: Lewis, Mu et al., "GIST: Generating Image-Specific Text for Fine-grained Object
Classification", arXiv 2307.11315 (2023). Official code: https://github.com/emu1729/GIST at
7c0934f (2023-08-14; MIT licence): ``caption_matching.py`` (last changed b9dfb5f),
``contrastive_training_clip.py`` (9ed3ba8), ``create_clip_embeddings.py`` (4b97b3f),
``clip_featurizer.py`` (0d1f2d0), ``linear_probe.py`` (b307756), ``run_*.sh``, ``README.md``,
``datasets/*/captions_top5.json``. Spec: docs/methods.md#gist.

The pipeline, one fit:

1. *Matching* (caption_matching.py). Each support image against the descriptions of its
   own class (the run's description set): softmax(100 · f·tᵀ) over them on L2-normalised
   features, test transform, descriptions encoded as written; the ``top_k`` (5) best kept.
   The matching backbone is a setting (``match_backbone``; default: the run's backbone, whose
   support features are already in the feature cache; ``paper`` for parity runs: GIST's
   ``ViT-B-32:laion2b_s34b_b79k``).
2. *Captions* (:mod:`fewshot.descriptions.captions`), a named source recorded in the record
   (``fit.captions``): ``matched`` (the matched descriptions used as captions directly),
   ``llm`` (each image's matched descriptions shortened by an LLM behind an OpenAI-compatible
   endpoint, answers cached), or ``published`` (a released ``captions_top5.json``).
   ``captions="auto"`` (the default) takes ``published`` when ``captions_file`` is set, else
   ``llm`` when ``llm_base_url`` and ``llm_model`` are set, else ``matched``.
3. *Contrastive fine-tuning* (contrastive_training_clip.py). Each image with its first
   ``num_captions`` (4) captions, text "{classname}: {caption}"; symmetric InfoNCE with
   CLIP's learnable logit scale; Adam (lr 1e-6, betas (0.9, 0.98), eps 1e-6, weight decay
   0.001 on every trained parameter, the logit scale included), batch 20, no schedule,
   fresh random-resized-crop + flip augmentation on every pass. ``trainable``: ``all``
   (GIST), ``image`` or ``text``; ``trainable_blocks`` N > 0 trains only the last N
   transformer blocks of those towers, with their final norm and projection.
4. *Linear probe* (linear_probe.py) on the fine-tuned model's un-normalised image
   features (test transform): ``nn.Linear`` with bias, SGD lr 0.5 (no momentum, no weight
   decay), batch 64, 1000 epochs, the epoch with the best few-shot val accuracy kept.

Selection: every ``checkpoint_every`` (10) epochs, and after the last, the probe is
trained on that checkpoint's features; the checkpoint whose probe has the best few-shot val
accuracy is kept (the earliest on a tie). With ``epochs=0`` the probe runs on the frozen
features: the baseline GIST is built on.

The fine-tuning stage is cached and resumable (:mod:`fewshot.stages`): its partial state
(trained weights, Adam state, the run generator's state, the best checkpoint so far) is
saved at every checkpoint, so an interrupted fit resumes at its last checkpoint (on a CPU,
with the same final weights as an uninterrupted fit; CUDA kernels are not all
deterministic); a finished stage is stored whole and a rerun skips it. A fine-tuned model
never enters the feature cache of the frozen backbone: its features are computed inside the
fit, and the record names its weights by their digest (``fit.finetuned_digest``).

Novel classes: GIST classifies with the probe only, so classes it was not trained on are
not applicable (``supports_novel = False``; base-to-novel reports novel as n/a,
cross-dataset transfer only scores targets whose classes are the source's).

Deviations from the official code:
- GIST shuffles all (image, caption) pairs of an epoch together, so a batch can hold one
  image twice, with two captions that are then each other's negatives. Here an epoch is
  ``num_captions`` passes over the shuffled support set, pass p pairing every image with a
  different one of its captions (a fresh random order per epoch), so one pass never pairs
  an image twice; and the loss masks pairs of the same image anyway (a support set sampled
  with replacement can hold an image twice). It also masks pairs whose captions are the
  same string (images of a class often match the same descriptions, and ``matched`` and
  ``class-name`` captions are then identical): such a caption would be a row's positive
  and its negative at once. ``mask_same_image=False`` drops both masks (GIST's loss).
- An image with fewer than ``num_captions`` captions (a class with fewer descriptions)
  reuses its captions in order; GIST's files always hold 5.
- Selection among checkpoints by the probe's few-shot val accuracy is ours: GIST saves a
  checkpoint every 10 epochs and its README evaluates the one after 40 epochs, with no
  selection in code. The default ``epochs`` is 40 with checkpoints every 10.
- Precision: GIST trains fp16 weights, casting to fp32 only for the Adam step. Here the
  weights stay fp32 and the forward passes run under the run's autocast, without loss
  scaling under fp16 (as the other trainers here; GIST scales nothing either); the probe
  always runs in fp32.
- GIST trains on its own splits and metadata (CUB, aircraft, flowers, Fitzpatrick40); here
  the harness's few-shot subsets. Its published captions are keyed by its image paths and
  cover its train images; ``published`` matches them to support images by path suffix, and
  images without an entry keep their matched descriptions (counted in the record). The
  files are read where ``captions_file`` names one; fewshot does not download them.
- The matching text is the description as written (GIST's too); GIST's CUB captions
  already start with "classname: ", so its training text repeats the class name. Here the
  prefix is added unless ``class_prefix=False``.
- Where GIST's summarisation is not available (its prompt and code are unreleased), the
  ``llm`` source uses our prompt (:data:`fewshot.descriptions.captions.SUMMARY_PROMPT`).
- Presets for the toy world (lr, epochs, probe) are ours, chosen on few-shot val data.
"""

from __future__ import annotations

import os
import urllib.parse
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from fewshot.methods._gist import match_top_k
from fewshot.methods._knowledge import knowledge_set, set_preset
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.types import AdapterConfig, BackboneSpec, ConfigError, FewshotError, stable_hash
from fewshot.workload import StepCost

if TYPE_CHECKING:
    from fewshot.backbones import Backbone
    from fewshot.stages import StageCache

__all__ = ["CAPTION_MODES", "PAPER_MATCH_BACKBONE", "Gist", "GistConfig"]

CAPTION_MODES = ("auto", "matched", "llm", "published")
TRAINABLE = ("all", "image", "text")
PAPER_MATCH_BACKBONE = "ViT-B-32:laion2b_s34b_b79k"  # caption_matching.py


@dataclass(frozen=True)
class GistConfig(AdapterConfig):
    """GIST settings (defaults: the official scripts; see the module docstring)."""

    descriptions: str = ""  # the long descriptions to match (a description set name)
    match_backbone: str = ""  # "" = the run's backbone; "paper" = GIST's ViT-B-32:laion2b_s34b_b79k
    top_k: int = 5  # matched descriptions kept per image
    captions: str = "auto"  # auto | matched | llm | published
    captions_file: str = ""  # published: a captions_top5.json (image path -> captions)
    llm_base_url: str = ""  # llm: an OpenAI-compatible endpoint (key: $OPENAI_API_KEY)
    llm_model: str = ""
    llm_concurrency: int = 4
    num_captions: int = 4  # captions paired with each image
    class_prefix: bool = True  # train on "{classname}: {caption}"
    trainable: str = "all"  # all | image | text
    trainable_blocks: int = 0  # 0: the whole tower(s); N: their last N blocks, final norm, projection
    epochs: int = 40  # README: the checkpoint after 40 epochs
    checkpoint_every: int = 10
    batch_size: int = 20
    lr: float = 1e-6
    betas: tuple[float, ...] = (0.9, 0.98)
    eps: float = 1e-6
    weight_decay: float = 0.001
    mask_same_image: bool = True  # pairs of one image, or with equal captions, are not negatives
    probe_lr: float = 0.5
    probe_epochs: int = 1000
    probe_batch_size: int = 64

    def __post_init__(self) -> None:
        if self.captions not in CAPTION_MODES:
            raise ConfigError(
                f"gist captions must be one of {', '.join(CAPTION_MODES)}, got {self.captions!r}."
            )
        if self.trainable not in TRAINABLE:
            raise ConfigError(
                f"gist trainable must be one of {', '.join(TRAINABLE)}, got {self.trainable!r}."
            )
        counts = [self.top_k, self.num_captions, self.batch_size, self.checkpoint_every]
        counts += [self.probe_epochs, self.probe_batch_size, self.llm_concurrency]
        if min(counts) < 1 or self.epochs < 0 or self.trainable_blocks < 0:
            raise ConfigError(
                "gist needs top_k, num_captions, batch_size, checkpoint_every, probe_epochs, "
                "probe_batch_size and llm_concurrency >= 1, and epochs and trainable_blocks >= 0."
            )
        if self.lr <= 0 or self.probe_lr <= 0 or len(self.betas) != 2:
            raise ConfigError("gist needs lr > 0, probe_lr > 0 and two betas, e.g. betas=0.9,0.98.")
        if self.captions == "published" and not self.captions_file:
            raise ConfigError("gist captions=published needs captions_file=PATH (a captions_top5.json).")
        if self.captions == "llm" and not (self.llm_base_url and self.llm_model):
            raise ConfigError("gist captions=llm needs llm_base_url=URL and llm_model=NAME.")

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """CuPL's long sentences as the descriptions (the toy sets on toy datasets); on the
        toy world, our settings chosen on few-shot val (the micro CLIP needs a larger lr
        than ViT-L's 1e-6, and fewer epochs)."""
        values: dict[str, Any] = {"descriptions": set_preset(dataset, "cupl-full")}
        if dataset.startswith("toy"):
            values.update(TOY_PRESET)
        return values

    def source(self) -> str:
        """The caption source ``auto`` resolves to."""
        if self.captions != "auto":
            return self.captions
        if self.captions_file:
            return "published"
        return "llm" if self.llm_base_url and self.llm_model else "matched"


TOY_PRESET: dict[str, Any] = {
    "epochs": 10,
    "checkpoint_every": 5,
    "lr": 3e-4,
    "batch_size": 32,
    "probe_epochs": 300,
}

# Settings that do not change the fine-tuned weights (left out of the stage key).
_NOT_IN_STAGE = frozenset({"llm_concurrency", "captions", "captions_file", "llm_base_url", "llm_model"})


class Gist(Adapter):
    """Contrastive fine-tuning on image-specific captions, then a linear probe."""

    config_cls = GistConfig
    needs = Needs.IMAGES  # query images pass through the fine-tuned image tower
    supports_novel = False  # the probe knows the training classes only
    knowledge: ClassVar[tuple[str, ...]] = ("descriptions",)
    config: GistConfig

    def __init__(self, config: GistConfig | None = None) -> None:
        super().__init__(config)
        self.visual: nn.Module | None = None
        self.probe: nn.Linear | None = None
        self.classnames: list[str] = []
        self.made: dict[str, Any] = {}
        self.chosen: dict[str, Any] = {}
        self.trained = 0
        self.requests = 0  # HTTP requests sent for LLM captions

    @classmethod
    def step_cost(cls, config: Any, classnames: list[str], online: bool) -> StepCost:
        """A step encodes a batch of augmented images and as many captions (estimated at 20
        words each), and an epoch is one pass per caption."""
        caption = "classname: " + " ".join(["word"] * 20)
        batch = int(config.batch_size)
        return StepCost(prompts=(caption,) * batch, images=batch, passes=int(config.num_captions))

    # -- fit ------------------------------------------------------------------------------

    def fit(self, ctx: FitContext) -> None:
        """Match, caption, fine-tune (cached, resumable) and probe; see the module docstring."""
        chosen = knowledge_set("gist", "descriptions", self.config.descriptions, ctx.descriptions)
        self.classnames = list(ctx.classnames)
        labels = ctx.train.labels.tolist()
        if chosen is None:  # no set: every image's one caption is its class's prompt
            self.made["captions"] = {"source": "class-name"}
            prompts = [ctx.template.format(name.replace("_", " ")) for name in ctx.classnames]
            self._finetune_and_probe(ctx, [[prompts[label]] * self.config.num_captions for label in labels])
            return
        per_class = [list(texts) for texts in chosen.sentences(ctx.classnames)]
        matched = self._match(ctx, per_class)
        captions = self._captions(ctx, matched)
        names = [ctx.classnames[label] for label in labels]
        texts = [self._texts(name, caps) for name, caps in zip(names, captions, strict=True)]
        self._finetune_and_probe(ctx, texts)

    def _match(self, ctx: FitContext, per_class: list[list[str]]) -> list[list[str]]:
        """Each support image's ``top_k`` descriptions of its own class, best first."""
        backbone, features = ctx.backbone, ctx.train.features
        wanted = PAPER_MATCH_BACKBONE if self.config.match_backbone == "paper" else self.config.match_backbone
        if wanted and BackboneSpec.parse(wanted).id != ctx.backbone.id:
            from fewshot.backbones import load_backbone

            backbone = load_backbone(wanted, ctx.device)
            features = _encode_all(backbone, ctx.train_images.derive(backbone=backbone))
        class_texts = [backbone.encode_texts(texts) for texts in per_class]
        picks = match_top_k(features.to(backbone.device), ctx.train.labels, class_texts, self.config.top_k)
        self.made["match_backbone"] = backbone.id
        return [
            [per_class[label][j] for j in row]
            for label, row in zip(ctx.train.labels.tolist(), picks, strict=True)
        ]

    def _captions(self, ctx: FitContext, matched: list[list[str]]) -> list[list[str]]:
        """The captions of each support image, from the configured source."""
        source = self.config.source()
        if source == "matched":
            self.made["captions"] = {"source": "matched"}
            return matched
        if source == "llm":
            return self._llm_captions(ctx, matched)
        return self._published_captions(ctx, matched)

    def _llm_captions(self, ctx: FitContext, matched: list[list[str]]) -> list[list[str]]:
        from fewshot.descriptions.captions import SUMMARY_PROMPT, SUMMARY_SAMPLING, summarise
        from fewshot.descriptions.generate import AnswerCache, Endpoint

        endpoint = Endpoint(
            self.config.llm_base_url, self.config.llm_model, os.environ.get("OPENAI_API_KEY", "")
        )
        cache = AnswerCache(_answers_root(ctx.stages))
        labels = ctx.train.labels.tolist()
        requests = {
            f"{i}:{path}": (ctx.classnames[label], tuple(texts))
            for i, (path, label, texts) in enumerate(zip(ctx.train.ids, labels, matched, strict=True))
        }
        answers, self.requests = summarise(requests, endpoint, cache, concurrency=self.config.llm_concurrency)
        captions = [answers[key] or own for key, own in zip(requests, matched, strict=True)]
        self.made["captions"] = {
            "source": "llm",
            "model": endpoint.model,
            "host": endpoint.host,
            "path": urllib.parse.urlsplit(endpoint.base_url).path.rstrip("/"),
            "prompt": stable_hash(SUMMARY_PROMPT),
            "sampling": dict(SUMMARY_SAMPLING),
            "matched_fallback": sum(answers[key] is None for key in requests),
        }
        return captions

    def _published_captions(self, ctx: FitContext, matched: list[list[str]]) -> list[list[str]]:
        from fewshot.backbones import file_digest
        from fewshot.descriptions.captions import load_published_captions, published_lookup

        published = load_published_captions(self.config.captions_file)
        out, covered = [], 0
        for path, own in zip(ctx.train.ids, matched, strict=True):
            found = published_lookup(published, path)
            covered += found is not None
            out.append(found if found is not None else own)
        self.made["captions"] = {
            "source": "published",
            "file": Path(self.config.captions_file).name,
            "sha256": file_digest(Path(self.config.captions_file).expanduser()),
            "covered": covered,
            "matched_fallback": len(out) - covered,
        }
        return out

    def _texts(self, classname: str, captions: list[str]) -> list[str]:
        """The ``num_captions`` training texts of one image (captions reused if too few)."""
        name = classname.replace("_", " ")
        chosen = [captions[j % len(captions)] for j in range(self.config.num_captions)]
        return [f"{name}: {c}" if self.config.class_prefix else c for c in chosen]

    # -- the fine-tuning stage ----------------------------------------------------------

    def _stage_key(self, ctx: FitContext, texts: list[list[str]]) -> dict[str, Any]:
        from fewshot.codeid import code_digest

        settings = {
            f.name: getattr(self.config, f.name) for f in fields(self.config) if f.name not in _NOT_IN_STAGE
        }
        return {
            "method": "gist",
            "stage": "finetune",
            "dataset": ctx.dataset,
            "backbone": ctx.backbone.id,
            "weights": ctx.backbone.weights_digest,
            "support": ctx.train.key,
            "items": stable_hash(list(ctx.train.ids)),
            "val": stable_hash([ctx.val.key, list(ctx.val.ids)]),
            "classnames": stable_hash(list(ctx.classnames)),
            "texts": stable_hash(texts),
            "seed": ctx.seed,
            "settings": stable_hash(settings),
            "code": code_digest(type(self)),
            "device": ctx.device.type,
        }

    def _finetune_and_probe(self, ctx: FitContext, texts: list[list[str]]) -> None:
        from fewshot.methods._gist_stage import FineTune

        key = self._stage_key(ctx, texts)
        stage = FineTune(self.config, ctx, texts, key)
        result = stage.run()
        self.visual, self.probe = result.visual, result.probe
        self.trained = result.trained_params
        self.made.update({"finetuned_digest": result.digest, "stage": result.status})
        self.chosen = {
            "epoch": result.epoch,
            "probe_epoch": result.probe_epoch,
            "val_accuracy": round(result.val_accuracy, 4),
            "trace": result.trace,
        }

    # -- results --------------------------------------------------------------------------

    def selected(self) -> dict[str, Any]:
        """The kept checkpoint (epochs trained), its probe's epoch and val accuracy, and the
        val accuracy of every checkpoint's probe."""
        return dict(self.chosen)

    def fit_provenance(self) -> dict[str, Any]:
        """Caption source, matching backbone, the fine-tuned weights' digest, and whether
        the fine-tuning stage ran, resumed or came from the stage cache."""
        return dict(self.made)

    def extra_costs(self) -> dict[str, float]:
        """HTTP requests sent to the LLM endpoint for captions (0 when all were cached)."""
        return {"llm_requests": float(self.requests)} if self.config.source() == "llm" else {}

    def trainable_parameters(self) -> int:
        """The fine-tuned parameters plus the probe's."""
        probe = 0 if self.probe is None else sum(p.numel() for p in self.probe.parameters())
        return self.trained + probe

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """Probe logits of the fine-tuned image tower's raw features."""
        if self.visual is None or self.probe is None:
            raise FewshotError("Gist.predict called before fit(): call fit(ctx) first.")
        if batch.images is None:
            raise FewshotError("gist needs query images in the QueryBatch (Needs.IMAGES).")
        unknown = [name for name in batch.classnames if name not in self.classnames]
        if unknown:
            raise FewshotError(
                f"gist cannot classify classes it was not trained on ({', '.join(unknown[:5])}): its "
                "linear probe has one weight vector per training class."
            )
        dtype = next(self.visual.parameters()).dtype
        features = self.visual(batch.images.to(dtype)).float()
        with torch.autocast(features.device.type, enabled=False):  # the probe runs in fp32
            logits = self.probe(features.to(self.probe.weight.device))
        columns = [self.classnames.index(name) for name in batch.classnames]
        return logits[:, columns]


def _answers_root(stages: StageCache | None) -> Path:
    """The LLM answer cache beside the stage cache (the describe command's, under the same root)."""
    from fewshot.descriptions.generate import ANSWERS_DIR
    from fewshot.features import default_cache_root

    root = stages.root.parent if stages is not None else default_cache_root()
    return root / ANSWERS_DIR


def _encode_all(backbone: Backbone, images: Any) -> torch.Tensor:
    """``backbone``'s features of every image of a source, in order (test transform)."""
    encode = backbone.encode_images
    rows = [
        encode(batch.to(backbone.device)).float()
        for batch, _ in images.loader(64, augment=False, shuffle=False)
    ]
    return torch.cat(rows)
