"""ProAPO: training-free evolutionary search of prompt templates, then of class descriptions.

Paper: Qu et al., "ProAPO: Progressively Automatic Prompt Optimization for Visual
Classification", CVPR 2025 (arXiv 2502.19844). Official code:
https://github.com/MorningStarOvO/ProAPO, commit fefdf185 (files read: tools/main.py,
tools/configs/option.py, tools/process/select_optimal_prompt.py,
tools/process/task_specific_selection.py,
tools/process/class_specific_selection_with_same_template.py,
tools/models/APO_build_knowledge_base/task_specific_knowledge.py,
tools/models/APO_build_knowledge_base/class_specific_knowledge_with_same_template.py,
tools/models/APO_split_group/split_group_by_Kmeans.py,
tools/models/APO_score_func/get_score_based_ACC.py, tools/models/util_prompt.py,
tools/utils/util_model.py, run/ProAPO_ViT-B-32.sh, data/dataset/*/config/*.yaml,
data/prompt_template_task_specific/dataset_type_list.json). Spec: docs/methods.md#proapo.

Algorithm as implemented (all scoring on the cached support features ``ctx.train``; text
embeddings cached per prompt string, each distinct prompt encoded once per run):
- Fitness F = w1·Acc@1 + w5·Acc@5 + w_r·R − w_ce·CE (util_model.get_fitness_score): Acc in
  percent (top-5 = top-min(5, C)), R = ‖triu(T·Tᵀ − I)‖_F of the class embeddings T (with a
  plus sign, as the code), CE = mean cross-entropy of logit_scale·f·Tᵀ. A set of prompts
  gives each class the normalised mean of its prompts' normalised embeddings.
- Stage 1, ATO. Library: the 80 OpenAI ImageNet templates (open_clip's
  ``OPENAI_IMAGENET_TEMPLATES``), lower-cased, each followed by up to 4 variants per dataset
  type word (``add_dataset_type_to_template``: every "." → ", a type of <w>."; " {}" →
  " <w>: {}"; "photo" → "<w>" and → "<w> photo"); "a photo of a {}." first, the baseline.
  Memory filter: a template whose Acc@1 is below the baseline's by θ = 200/C + 0.1 points
  or more is dropped (option.py's ``threshold_worst_decrease``); with ``num_max_prompt`` > 0
  only the best N by F stay. Population: 4 random single templates (``sample_manual``).
  Each of ``epochs`` epochs takes the top-4 sets by F among all sets scored so far and
  makes, per top set, 8 "add one unused template", 8 "remove one" (sets of more than 2)
  and 8 "replace one"; then 8 mutations (random sets of 2 + epoch templates) and 16
  crossovers (the templates common to the top-4 plus a random-size subset of the others,
  drawn ∝ how many top sets hold them). Sets already scored are skipped (bit-string
  de-duplication) with up to 64 extra tries per operator. Result: the best set by F.
- Stage 2 (``--APO_mode agnostic_and_dependent``, with-same-template variant). Items of
  class c: its label and its synonyms (``synonyms`` set), each alone and paired with each
  of c's descriptions (the class name inside a description replaced by the synonym); an
  item gives one prompt per chosen template, ``t.format(label) + " " + description``.
  With ``description_sample`` the start is the best of: all descriptions per class, the
  class name only, 16 random subsets (size in [⌊n/3 + 0.71⌋, n] per class) and 16 of one
  shared size. Then ``epochs_outer`` rounds of grouping: classes ordered by their CE,
  worst first; each with the classes in its images' top-5 predictions for ≥ 4 % of them
  (``threshold_confuse``) and its K-means cluster of class text features (scikit-learn
  KMeans, k by silhouette score over 5, 7, … < 0.2·C, or k = 2 when 0.2·C < 5), capped at
  ⌊2.5 ln C⌋ classes per group and ⌊10 ln C⌋ classes in all. The first
  ``num_max_search_group`` groups are searched: single-item edits that lower Acc@1 by θ or
  more are dropped, then an inner loop of ``epochs_inner`` = 4 epochs, stopping early after
  (kept edits + 1) epochs as the official loop does (top 4; add / remove / replace 8 each;
  mutation 4; crossover 16) over the group's item sets.
- Prediction: zero-shot with the found class embeddings; a class never searched (a novel
  class) gets its name with the chosen templates.

Presets: the per-dataset YAML weights, epochs and search sizes of
``data/dataset/<ds>/config/clip_ViT-B-32-num_shots_1.yaml`` ("agnostic" → ``ato_*``,
"specific" → ``desc_*``), description sampling where the code forces it (DTD, ImageNet,
SUN397, Places365, Caltech101, EuroSAT, Aircraft) or the YAML sets it; option.py's
defaults elsewhere, the toy datasets included (our choice: they have no YAML). The same
values are used at every shot count (the YAMLs are for 1 shot; θ keeps the code's formula).
Type words: our own short list per dataset, written from what each dataset shows
(``TYPE_WORDS``); the official ``dataset_type_list.json`` is not copied.

Deviations from the official code:
- No test data: the original's ``update_best_result`` keeps, across runs, the template and
  description sets with the best TEST accuracy and starts later runs from them (and shares
  the task directory across seeds); here each run selects by training fitness only, and
  never sees test data.
- The fitness history per generation (``selected()["fitness_history"]``) is the best F
  among all candidates scored so far in the stage (the original logs test accuracy).
- Class ordering for groups is by CE, worst first (the paper's "hard categories"). The
  code sorts per-class CE ascending and reads the confusions of the class at the sorted
  position rather than of the named class (an index mix-up); that is not reproduced. The
  optional "category importance" ordering (on by default in option.py, off for ImageNet)
  is not implemented: groups follow CE order.
- The group population restarts from the current sets for every group (the original
  carries its record across groups, ``update_record_in_group_end_mode="use_top1"``).
- Weighted library sampling (``prompt_sample_mode: weighted``, Oxford Pets) is not
  implemented; sampling is uniform everywhere.
- K-means is scikit-learn's (150 iterations, 1 init, its seed drawn from the run's generator),
  not faiss.
- Prompts keep their case (the original lower-cases stage-2 prompts; CLIP's tokenizer
  lower-cases anyway). Synonyms and descriptions come from the run's sets (``synonyms``,
  ``descriptions`` configs; "" drops one), not the repository's JSON files; DCLIP-style
  descriptors are turned into "which is/has …" phrases and the templates' "." into ","
  when ``dclip_phrases`` is set (set it with a DCLIP-style descriptor set such as "dclip";
  only on the stage-2 path, so an ATO-only result keeps its templates as scored).
- Image features use the harness's CLIP preprocessing, not Resize(256) + CenterCrop(224).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
import torch.nn.functional as F

from fewshot.methods._knowledge import TextCache, knowledge_set, set_preset
from fewshot.methods._proapo_descriptions import ClassPrompts, DescriptionSearch, Item
from fewshot.methods._proapo_search import Evolution, Scorer, Weights, choose, template_library
from fewshot.methods.base import Adapter, FitContext, Needs, QueryBatch
from fewshot.methods.dclip import descriptor_phrase
from fewshot.methods.zeroshot import default_templates
from fewshot.types import AdapterConfig, FewshotError

if TYPE_CHECKING:
    from fewshot.backbones import Backbone

__all__ = ["TYPE_WORDS", "ProAPO", "ProAPOConfig"]

BASELINE = "a photo of a {}."

TYPE_WORDS: dict[str, str] = {
    "caltech101": "object,everyday thing",
    "cub": "bird,songbird",
    "dtd": "texture,pattern,surface",
    "eurosat": "satellite photo,aerial view,land use",
    "fgvc-aircraft": "aircraft,airplane,jet",
    "flowers102": "flower,blossom,plant",
    "food101": "food,dish,meal",
    "imagenet": "object,thing",
    "imagenet-v2": "object,thing",
    "imagenet-a": "object,thing",
    "imagenet-r": "rendition,artwork",
    "imagenet-sketch": "sketch,drawing",
    "oxford-pets": "pet,animal,dog or cat breed",
    "places365": "scene,place,location",
    "stanford-cars": "car,vehicle,automobile",
    "sun397": "scene,place,location",
    "ucf101": "action,activity,person doing",
    "toy-shapes": "shape",
    "toy-colors": "color,colored shape",
    "toy-textures": "texture,pattern",
    "toy-objects": "object,shape",
    "toy-shapes-sketch": "sketch,shape",
}
"""Our dataset type words (comma-separated), one short list per dataset."""

_YAML: dict[str, dict[str, Any]] = {  # clip_ViT-B-32-num_shots_1.yaml, agnostic → ato_, specific → desc_
    "caltech101": dict(ato=(0.005, 0.008, 0, 10), epochs=6, desc=(0.08, 0, 0, 10), groups=1, outer=2),
    "cub": dict(ato=(0.5, 0.05, 0, 10), epochs=6, desc=(0, 0.2, 0, 10), groups=1, outer=2),
    "dtd": dict(ato=(0, 0, 0.5, 10), desc=(0, 0.5, 0, 10), groups=4, outer=3, sample=True),
    "eurosat": dict(ato=(0.05, 0, 1.0, 10), max_prompt=256, desc=(0.08, 0, 0, 10), groups=1, outer=2),
    "fgvc-aircraft": dict(
        ato=(1.0, 0, 0, 10), max_prompt=256, epochs=7, desc=(0.02, 0.5, 0, 10), groups=4, outer=3
    ),
    "flowers102": dict(
        ato=(0.01, 0, 0.01, 10), max_prompt=256, epochs=5, desc=(0, 0.08, 0, 10), groups=4, outer=3
    ),
    "food101": dict(ato=(0.01, 0.01, 0.05, 10), max_prompt=256, desc=(0.01, 0, 0, 10), groups=1, outer=1),
    "imagenet": dict(ato=(0, 0.05, 0.01, 10), desc=(0.008, 0.8, 0, 10), groups=2, outer=2, sample=True),
    "oxford-pets": dict(ato=(0.05, 0.1, 0.1, 10), max_prompt=32, desc=(0, 0.0001, 0, 10), groups=1, outer=1),
    "places365": dict(
        ato=(0.05, 0.01, 0, 10), max_prompt=32, desc=(5.0, 8.0, 0, 10), groups=3, outer=1, sample=True
    ),
    "stanford-cars": dict(ato=(0.01, 0.1, 0.01, 10), epochs=6, desc=(0, 0.001, 0, 10), groups=2, outer=2),
    "sun397": dict(
        ato=(0.05, 0, 0.001, 10), max_prompt=64, desc=(0.005, 0, 0, 10), groups=3, outer=3, sample=True
    ),
    # ucf101's YAML spells "num_max_prompts", a key the code never reads: no cap.
    "ucf101": dict(ato=(0, 0.1, 0, 10), epochs=5, desc=(0.008, 0.5, 0, 10), groups=4, outer=3),
}
_FORCED_SAMPLE = ("dtd", "imagenet", "sun397", "places365", "caltech101", "eurosat", "fgvc-aircraft")


@dataclass(frozen=True)
class ProAPOConfig(AdapterConfig):
    """ProAPO settings (defaults: option.py; presets: the per-dataset YAMLs)."""

    descriptions: str = ""  # description set for stage 2; "" = none (synonyms / ATO only)
    synonyms: str = ""  # synonym set for stage 2; "" = none
    type_words: str = ""  # comma-separated dataset type words added to the template library
    ato_top1: float = 0.1  # stage-1 weights (option.py defaults)
    ato_top5: float = 0.1
    ato_redundancy: float = 0.05
    ato_ce: float = 10.0
    epochs: int = 8  # ATO epochs
    num_max_prompt: int = 0  # keep the best N templates after the memory filter (0 = all)
    desc_top1: float = 0.1  # stage-2 weights (option.py defaults)
    desc_top5: float = 0.1
    desc_redundancy: float = 0.05
    desc_ce: float = 10.0
    epochs_outer: int = 3
    epochs_inner: int = 4
    num_max_search_group: int = 4
    description_sample: bool = False  # start stage 2 from the best of 2 + 16 + 16 samples
    dclip_phrases: bool = False  # descriptions are DCLIP descriptors: "which is/has …" phrases
    stage2: bool = True  # False = ATO only

    @classmethod
    def preset(cls, protocol: str, shots: int, dataset: str) -> dict[str, Any]:
        """The dataset's YAML values, its type words and sets (toy: option.py's defaults)."""
        values: dict[str, Any] = {
            "descriptions": set_preset(dataset, "cupl-full"),
            "synonyms": set_preset(dataset, "synonyms-gpt4-turbo"),  # the run scripts' gpt-4-turbo file
            "type_words": TYPE_WORDS.get(dataset, ""),
        }
        yaml = _YAML.get(dataset, {})
        for prefix, key in (("ato", "ato"), ("desc", "desc")):
            if key in yaml:
                names = ("top1", "top5", "redundancy", "ce")
                values.update({f"{prefix}_{n}": float(v) for n, v in zip(names, yaml[key], strict=True)})
        renames = {"epochs": "epochs", "max_prompt": "num_max_prompt", "groups": "num_max_search_group"}
        values.update({renames[k]: yaml[k] for k in renames if k in yaml})
        if "outer" in yaml:
            values["epochs_outer"] = yaml["outer"]
        if yaml.get("sample") or dataset in _FORCED_SAMPLE:
            values["description_sample"] = True
        return values


_ATO_COUNTS = {"add": 8, "remove": 8, "replace": 8, "mutation": 8, "crossover": 16}
_DESC_COUNTS = {"add": 8, "remove": 8, "replace": 8, "mutation": 4, "crossover": 16}


class ProAPO(Adapter):
    """Template search (ATO) then per-class description search, on the support set."""

    config_cls = ProAPOConfig
    needs = Needs.FEATURES
    supports_novel = True  # a class never searched gets its name with the chosen templates
    knowledge: ClassVar[tuple[str, ...]] = ("descriptions", "synonyms")
    config: ProAPOConfig

    def __init__(self, config: ProAPOConfig | None = None) -> None:
        super().__init__(config)
        self.backbone: Backbone | None = None
        self.cache: TextCache | None = None
        self.prompts: ClassPrompts | None = None
        self.class_items: dict[str, list[Item]] = {}
        self.history: dict[str, list[float]] = {"templates": [], "descriptions": []}
        self.scored = 0

    def weights(self, stage: str) -> Weights:
        c = self.config
        if stage == "ato":
            return Weights(c.ato_top1, c.ato_top5, c.ato_redundancy, c.ato_ce)
        return Weights(c.desc_top1, c.desc_top5, c.desc_redundancy, c.desc_ce)

    def fit(self, ctx: FitContext) -> None:
        """Search templates, then class items, scoring on the support features only."""
        self.backbone, self.cache = ctx.backbone, TextCache(ctx.backbone)
        self.history = {"templates": [], "descriptions": []}
        scorer = Scorer(
            ctx.train.features.to(ctx.device), ctx.train.labels.to(ctx.device), ctx.backbone.logit_scale
        )
        threshold = 200.0 / len(ctx.classnames) + 0.1
        templates = self._search_templates(ctx, scorer, threshold)
        self.prompts = ClassPrompts(self.cache, templates)
        current: list[list[Item]] = [[(name, "")] for name in ctx.classnames]
        pools, described = self._pools(ctx, templates) if self.config.stage2 else ([], [])
        if any(pools):
            search = DescriptionSearch(
                self.prompts, scorer, self.weights("desc"), pools, current, ctx.generator, threshold
            )
            search.history.append(search.current_fitness())
            if self.config.description_sample and any(described):
                search.sample_start(described)
            search.run(
                self.config.epochs_outer,
                self.config.num_max_search_group,
                self.config.epochs_inner,
                _DESC_COUNTS,
            )
            current, self.history["descriptions"] = search.current, search.history
        self.class_items = dict(zip(ctx.classnames, current, strict=True))
        self.scored = scorer.scored

    def _search_templates(self, ctx: FitContext, scorer: Scorer, threshold: float) -> list[str]:
        """Stage 1 (ATO): memory filter, then the evolutionary search over template sets."""
        assert self.cache is not None
        words = [w.strip() for w in self.config.type_words.split(",") if w.strip()]
        library = template_library(default_templates(), words, BASELINE)
        names = ctx.classnames
        per = self.cache([t.format(c) for t in library for c in names]).view(len(library), len(names), -1)
        terms = scorer.terms(per)
        fitness = Scorer.fitness(terms, self.weights("ato"))
        top1 = terms["top1"]
        pool = [0] + [i for i in range(1, len(library)) if float(top1[0] - top1[i]) < threshold]
        if 0 < self.config.num_max_prompt < len(pool):
            pool = sorted(pool, key=lambda i: -float(fitness[i]))[: self.config.num_max_prompt]
        evolution = Evolution(lambda keys: self._score_sets(keys, per, scorer), ctx.generator)
        start = choose(ctx.generator, pool, min(4, len(pool)))
        evolution.scores.update({frozenset([i]): float(fitness[i]) for i in start})
        self.history["templates"].append(evolution.best()[1])
        for epoch in range(self.config.epochs):
            evolution.generation(pool, _ATO_COUNTS, mutation_size=2 + epoch, min_remove=2)
            self.history["templates"].append(evolution.best()[1])
        best, _ = evolution.best()
        return [library[i] for i in sorted(best)]

    def _score_sets(self, keys: list[frozenset[int]], per: torch.Tensor, scorer: Scorer) -> torch.Tensor:
        mask = torch.zeros(len(keys), per.shape[0], device=per.device)
        for row, key in enumerate(keys):
            mask[row, sorted(key)] = 1.0
        texts = F.normalize(torch.einsum("sl,lcd->scd", mask, per), dim=-1)
        return Scorer.fitness(scorer.terms(texts), self.weights("ato"))

    def _pools(self, ctx: FitContext, templates: list[str]) -> tuple[list[list[Item]], list[list[Item]]]:
        """Candidate items per class (synonyms and pairs, class name first) and the class-name
        + description items (for description sampling)."""
        descriptions = knowledge_set("proapo", "descriptions", self.config.descriptions, ctx.descriptions)
        synonyms = knowledge_set("proapo", "synonyms", self.config.synonyms, ctx.synonyms)
        names = ctx.classnames
        texts = descriptions.sentences(names) if descriptions else [() for _ in names]
        if self.config.dclip_phrases and descriptions:
            texts = [tuple(descriptor_phrase(d) for d in ds) for ds in texts]
            assert self.prompts is not None
            self.prompts.templates = [t.replace(".", ",") for t in templates]
        labels = synonyms.sentences(names) if synonyms else [() for _ in names]
        pools, described = [], []
        for name, syns, ds in zip(names, labels, texts, strict=True):
            label_list = list(dict.fromkeys([*syns, name]))
            items = [(s, "") for s in label_list] + [(s, d.replace(name, s)) for s in label_list for d in ds]
            pools.append([it for it in dict.fromkeys(items) if it != (name, "")])
            described.append([(name, d) for d in dict.fromkeys(ds)])
        return pools, described

    def predict(self, batch: QueryBatch) -> torch.Tensor:
        """logit_scale · cos(image, class embedding of the found prompt set)."""
        if self.backbone is None or self.prompts is None:
            raise FewshotError("ProAPO.predict called before fit(): call fit(ctx) first.")
        if batch.features is None:
            raise FewshotError("ProAPO needs image features in the QueryBatch (Needs.FEATURES).")
        sets = [self.class_items.get(name, [(name, "")]) for name in batch.classnames]
        weights = self.prompts.embed(sets).to(batch.features.device)
        image = F.normalize(batch.features.float(), dim=-1)
        return self.backbone.logit_scale * image @ weights.t()

    def selected(self) -> dict[str, Any]:
        """Chosen templates, items per class (their count, and a hash of every class's chosen
        items, so two records say whether they chose the same prompt sets), and the best
        fitness per generation."""
        templates = self.prompts.templates if self.prompts else []
        chosen = json.dumps(sorted((name, sorted(items)) for name, items in self.class_items.items()))
        return {
            "templates": list(templates),
            "items_per_class": {name: len(items) for name, items in self.class_items.items()},
            "items_hash": hashlib.sha256(chosen.encode()).hexdigest()[:16],
            "fitness_history": {k: [round(v, 6) for v in vs] for k, vs in self.history.items()},
        }

    def extra_costs(self) -> dict[str, float]:
        """Distinct prompts encoded, candidate prompt sets scored, and the search's best
        training fitness per stage at its first and last generation (the full history per
        generation is in :meth:`selected`)."""
        costs = {"prompts_encoded": float(self.cache.encoded if self.cache else 0)}
        costs["candidates_scored"] = float(self.scored)
        for stage, values in self.history.items():
            if values:
                costs[f"fitness_{stage}_first"] = round(values[0], 6)
                costs[f"fitness_{stage}_last"] = round(values[-1], 6)
                costs[f"generations_{stage}"] = float(len(values))
        return costs
