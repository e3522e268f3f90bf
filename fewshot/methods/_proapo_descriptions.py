"""ProAPO stage 2: per-class prompt search over synonyms and descriptions, by groups of classes.

A class's prompt set is a list of *items*: a label alone (the class name or a synonym) or a
pair (label, description). An item becomes one prompt per chosen template,
``t.format(label)`` or ``t.format(label) + " " + description``; a class embedding is the
normalised mean of its prompts' normalised embeddings. See :mod:`fewshot.methods.proapo`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from fewshot.methods._proapo_search import Evolution, Key, Scorer, Weights, choose, log_count, randint

if TYPE_CHECKING:
    from fewshot.methods._knowledge import TextCache

__all__ = ["ClassPrompts", "DescriptionSearch", "Item", "kmeans_groups"]

Item = tuple[str, str]  # (label, description); description "" = the label alone


@dataclass
class ClassPrompts:
    """Item embeddings (sum over templates of normalised prompt embeddings), cached per item."""

    cache: TextCache
    templates: list[str]
    vectors: dict[Item, torch.Tensor] = field(default_factory=dict)

    def prompts(self, item: Item) -> list[str]:
        label, description = item
        return [t.format(label) + (f" {description}" if description else "") for t in self.templates]

    def vector(self, items: Sequence[Item]) -> torch.Tensor:
        """(len(items), D): each item's summed prompt embeddings (encoding the new ones)."""
        new = [it for it in dict.fromkeys(items) if it not in self.vectors]
        if new:
            flat = self.cache([p for it in new for p in self.prompts(it)])
            sums = flat.view(len(new), len(self.templates), -1).sum(dim=1)
            self.vectors.update(zip(new, sums, strict=True))
        return torch.stack([self.vectors[it] for it in items])

    def embed(self, sets: Sequence[Sequence[Item]]) -> torch.Tensor:
        """Class embeddings (C, D) for one item list per class."""
        return F.normalize(torch.stack([self.vector(items).sum(dim=0) for items in sets]), dim=-1)


def kmeans_groups(text: torch.Tensor, seed: int, rate: float = 0.2) -> list[int]:
    """Cluster id per class: K-means on class text features, k by silhouette score over
    k = 5, 7, … < rate·C (k = 2 alone when rate·C < 5); all in one cluster when no k scores > 0."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = text.detach().cpu().double().numpy()
    top = int(len(x) * rate)
    ks = range(2, 3) if top < 5 else range(5, top, 2)
    best, labels = 0.0, np.zeros(len(x), dtype=int)
    for k in ks:
        if k >= len(x):
            break
        pred = KMeans(n_clusters=k, n_init=1, max_iter=150, random_state=seed).fit_predict(x)
        if len(set(pred.tolist())) < 2:
            continue
        score = float(silhouette_score(x, pred))
        if score > best:
            best, labels = score, pred
    return [int(v) for v in labels]


class DescriptionSearch:
    """Groups of hard classes, then an evolutionary search of each group's prompt sets."""

    def __init__(
        self,
        prompts: ClassPrompts,
        scorer: Scorer,
        weights: Weights,
        pools: list[list[Item]],
        current: list[list[Item]],
        generator: torch.Generator,
        threshold: float,
    ) -> None:
        self.prompts, self.scorer, self.weights = prompts, scorer, weights
        self.pools, self.current = pools, [list(s) for s in current]
        self.generator, self.threshold = generator, threshold
        self.history: list[float] = []

    # -- scoring -------------------------------------------------------------------------

    def matrix(self) -> torch.Tensor:
        return self.prompts.embed(self.current)

    def score(self, texts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(fitness, Acc@1) of (S, C, D)."""
        terms = self.scorer.terms(texts)
        return Scorer.fitness(terms, self.weights), terms["top1"]

    def current_fitness(self) -> float:
        return float(self.score(self.matrix().unsqueeze(0))[0][0])

    # -- initial point: description sampling ---------------------------------------------

    def sample_start(self, described: list[list[Item]], n_random: int = 16, n_same: int = 16) -> None:
        """Score all-descriptions, class-name-only, ``n_random`` random subsets (own size per
        class) and ``n_same`` (one size for all), and keep the best as the current sets."""
        options: list[list[list[Item]]] = [
            [d or cur for d, cur in zip(described, self.current, strict=True)],
            [list(cur) for cur in self.current],
        ]
        for _ in range(n_random):
            options.append(
                [
                    self._subset(d, self._size(len(d))) or cur
                    for d, cur in zip(described, self.current, strict=True)
                ]
            )
        for _ in range(n_same):
            size = self._size(len(described[-1]))  # drawn from the last class's count, as the original
            options.append(
                [
                    self._subset(d, min(size, len(d))) or cur
                    for d, cur in zip(described, self.current, strict=True)
                ]
            )
        texts = torch.stack([self.prompts.embed(option) for option in options])
        fitness, _ = self.score(texts)
        best = int(torch.argmax(fitness))
        self.current = [list(s) for s in options[best]]
        self.history.append(float(fitness[best]))

    def _size(self, n: int) -> int:
        return randint(self.generator, min(int(n / 3 + 0.71), n), n) if n else 0

    def _subset(self, items: list[Item], k: int) -> list[Item]:
        return [items[i] for i in sorted(choose(self.generator, range(len(items)), k))] if k else []

    # -- groups --------------------------------------------------------------------------

    def groups(self, confuse: float = 4.0) -> list[list[int]]:
        """Classes worst first by CE; each with the classes in its images' top-5 (≥ confuse %)
        and its K-means cluster, capped at ⌊2.5 ln C⌋ classes; ⌊10 ln C⌋ classes in all."""
        text = self.matrix()
        logits = self.scorer.logit_scale * self.scorer.image @ text.t()
        labels, num = self.scorer.labels, text.shape[0]
        ce = F.cross_entropy(logits, labels, reduction="none")
        per_class = torch.zeros(num).index_add_(0, labels.cpu(), ce.cpu())
        seen = torch.bincount(labels.cpu(), minlength=num)
        per_class = torch.where(seen > 0, per_class / seen.clamp(min=1), torch.full_like(per_class, -1.0))
        order = sorted(range(num), key=lambda c: -float(per_class[c]))
        clusters = kmeans_groups(text, randint(self.generator, 0, 2**31 - 2))
        top5 = logits.topk(min(5, num), dim=-1).indices
        cap, budget = log_count(num, 2.5), log_count(num, 10)
        taken: set[int] = set()
        out: list[list[int]] = []
        for c in order:
            if c in taken or int(seen[c]) == 0 or len(taken) >= budget:
                continue
            rows = top5[labels == c]
            share = torch.bincount(rows.flatten().cpu(), minlength=num).float() / rows.shape[0] * 100
            confused = [j for j in range(num) if j != c and float(share[j]) >= confuse and j not in taken]
            cluster = [j for j in range(num) if clusters[j] == clusters[c] and j != c and j not in taken]
            group = list(dict.fromkeys([c, *confused, *cluster]))[:cap]
            taken.update(group)
            out.append(group)
        return out

    # -- search --------------------------------------------------------------------------

    def run(self, outer: int, max_groups: int, inner: int, counts: dict[str, int], top: int = 4) -> None:
        """``outer`` rounds of grouping; in each, search the first ``max_groups`` groups."""
        if not self.history:
            self.history.append(self.current_fitness())
        for _ in range(outer):
            for group in self.groups()[:max_groups]:
                if len(group) > 1:
                    self._search_group(group, inner, counts, top)

    def _search_group(self, group: list[int], inner: int, counts: dict[str, int], top: int) -> None:
        universe: list[tuple[int, Item]] = [(c, it) for c in group for it in self.current[c]]
        base = frozenset(range(len(universe)))
        edits = [(c, it) for c in group for it in self.pools[c] if it not in self.current[c]]
        start = len(universe)
        universe += edits
        evaluate = self._evaluator(group, universe)
        singles = [base | {start + i} for i in range(len(edits))]
        if not singles:
            return
        fitness_top1 = self._score_keys(group, universe, [base, *singles])
        base_top1 = float(fitness_top1[1][0])
        keep = [
            start + i for i in range(len(edits)) if base_top1 - float(fitness_top1[1][i + 1]) < self.threshold
        ]
        evolution = Evolution(evaluate, self.generator, top)
        evolution.scores[base] = float(fitness_top1[0][0])
        evolution.scores.update({base | {i}: float(fitness_top1[0][i - start + 1]) for i in keep})
        for epoch in range(inner):
            if epoch >= len(keep) + 1:
                break
            evolution.generation(keep, counts, mutation_size=2 + epoch, min_remove=1)
            self.history.append(evolution.best()[1])
        best, _ = evolution.best()
        for c in group:
            items = [universe[i][1] for i in sorted(best) if universe[i][0] == c]
            if items:
                self.current[c] = items

    def _evaluator(self, group: list[int], universe: list[tuple[int, Item]]):  # type: ignore[no-untyped-def]
        def evaluate(keys: list[Key]) -> torch.Tensor:
            return self._score_keys(group, universe, keys)[0]

        return evaluate

    def _score_keys(
        self, group: list[int], universe: list[tuple[int, Item]], keys: list[Key]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(fitness, Acc@1) of candidates: the group's classes take the items the key holds
        (a class left with none keeps its current set), every other class is unchanged."""
        vectors = self.prompts.vector([it for _, it in universe])  # (M, D)
        mask = torch.zeros(len(keys), len(universe), device=vectors.device)
        for row, key in enumerate(keys):
            mask[row, sorted(key)] = 1.0
        texts = self.matrix().unsqueeze(0).repeat(len(keys), 1, 1)
        for c in group:
            own = [i for i, (owner, _) in enumerate(universe) if owner == c]
            sums = mask[:, own] @ vectors[own]  # (S, D)
            empty = mask[:, own].sum(dim=1, keepdim=True) == 0
            fallback = self.prompts.vector(self.current[c]).sum(dim=0, keepdim=True)
            texts[:, c] = F.normalize(torch.where(empty, fallback, sums), dim=-1)
        return self.score(texts)
