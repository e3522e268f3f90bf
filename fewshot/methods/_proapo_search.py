"""ProAPO's search machinery: fitness, evolutionary operators, template and description search.

Everything here works on cached, L2-normalised support features and on text embeddings the
caller computes (through a per-run :class:`~fewshot.methods._knowledge.TextCache`); every
random draw comes from the ``torch.Generator`` it is given. See :mod:`fewshot.methods.proapo`
for the algorithm, its sources and its deviations.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "Evolution",
    "Scorer",
    "Weights",
    "choose",
    "fitness_terms",
    "randint",
    "template_library",
]

Key = frozenset[int]  # a candidate: the ids of the prompts (or items) it holds


@dataclass(frozen=True)
class Weights:
    """F = top1 · Acc@1 + top5 · Acc@5 + redundancy · R − ce · CE."""

    top1: float
    top5: float
    redundancy: float
    ce: float


def fitness_terms(
    image: torch.Tensor, labels: torch.Tensor, text: torch.Tensor, logit_scale: float
) -> dict[str, torch.Tensor]:
    """Acc@1, Acc@5 (percent), R and CE for a batch of class-embedding matrices.

    ``image`` (N, D) and ``text`` (S, C, D) are L2-normalised; each returned tensor is (S,).
    R = ‖triu(T·Tᵀ − I)‖_F; CE = mean cross-entropy of logit_scale · f · Tᵀ (get_acc_scores).
    """
    logits = logit_scale * torch.einsum("nd,scd->snc", image, text)  # (S, N, C)
    k = min(5, text.shape[1])
    top = logits.topk(k, dim=-1).indices  # (S, N, k)
    hit = top == labels.view(1, -1, 1)
    top1 = hit[..., 0].float().mean(dim=1) * 100
    top5 = hit.any(dim=-1).float().mean(dim=1) * 100
    eye = torch.eye(text.shape[1], device=text.device)
    gram = torch.triu(text @ text.transpose(1, 2) - eye)
    redundancy = gram.flatten(1).norm(dim=1)
    flat = logits.reshape(-1, logits.shape[-1])
    ce = (
        F.cross_entropy(flat, labels.repeat(text.shape[0]), reduction="none")
        .view(text.shape[0], -1)
        .mean(dim=1)
    )
    return {"top1": top1, "top5": top5, "redundancy": redundancy, "ce": ce}


class Scorer:
    """Fitness of class-embedding matrices on the support features, in chunks."""

    def __init__(
        self, image: torch.Tensor, labels: torch.Tensor, logit_scale: float, chunk: int = 64
    ) -> None:
        self.image = F.normalize(image.float(), dim=-1)
        self.labels = labels.long().to(self.image.device)
        self.logit_scale = float(logit_scale)
        self.chunk = chunk
        self.scored = 0  # candidates scored, for the cost report

    def terms(self, text: torch.Tensor) -> dict[str, torch.Tensor]:
        """:func:`fitness_terms` over (S, C, D), chunked along S."""
        parts = [
            fitness_terms(self.image, self.labels, text[i : i + self.chunk], self.logit_scale)
            for i in range(0, text.shape[0], self.chunk)
        ]
        self.scored += text.shape[0]
        return {key: torch.cat([p[key] for p in parts]) for key in parts[0]}

    @staticmethod
    def fitness(terms: dict[str, torch.Tensor], w: Weights) -> torch.Tensor:
        """F from the terms (get_fitness_score)."""
        return (
            w.top1 * terms["top1"]
            + w.top5 * terms["top5"]
            + w.redundancy * terms["redundancy"]
            - w.ce * terms["ce"]
        )


def randint(generator: torch.Generator, low: int, high: int) -> int:
    """A uniform integer in [low, high], both included."""
    return int(torch.randint(low, high + 1, (1,), generator=generator))


def choose(
    generator: torch.Generator, items: Sequence[int], k: int, weights: Sequence[float] | None = None
) -> list[int]:
    """``k`` distinct items, uniformly or with probability ∝ weights (shifted to be positive
    as random_weighted_choice does)."""
    if weights is None:
        order = torch.randperm(len(items), generator=generator)[:k]
    else:
        p = torch.tensor(weights, dtype=torch.float64) + 1e-4
        if (p < 0).any():
            p = p - p.min() + 1e-4
        order = torch.multinomial(p / p.sum(), k, replacement=False, generator=generator)
    return [items[int(i)] for i in order]


def template_library(templates: Sequence[str], type_words: Sequence[str], first: str) -> list[str]:
    """The templates, each followed by its dataset-type variants (add_dataset_type_to_template):
    "…, a type of <type>." (every "." replaced), "… <type>: {}", and where "photo" occurs,
    "photo" → "<type>" and → "<type> photo". Lower-cased, duplicates dropped, ``first`` first."""
    out: list[str] = []
    for template in (t.lower() for t in templates):
        out.append(template)
        for word in (w.lower() for w in type_words):
            out.append(template.replace(".", f", a type of {word}."))
            out.append(template.replace(" {}", f" {word}: {{}}"))
            if "photo" in template:
                out.append(template.replace("photo", word))
                out.append(template.replace("photo", f"{word} photo"))
    unique = list(dict.fromkeys(t for t in out if "{}" in t))
    if first in unique:
        unique.remove(first)
    return [first, *unique]


class Evolution:
    """One evolutionary search over sets of ids (ATO's loop; the inner loop of stage 2).

    ``evaluate`` maps candidate keys to fitness values (one tensor); every candidate ever
    scored stays in the population, so the best fitness never decreases. Keys already seen
    are skipped (the bit-string de-duplication), with up to 64 extra tries per operator.
    """

    def __init__(
        self, evaluate: Callable[[list[Key]], torch.Tensor], generator: torch.Generator, top: int = 4
    ) -> None:
        self.evaluate = evaluate
        self.generator = generator
        self.top = top
        self.scores: dict[Key, float] = {}

    def add(self, keys: list[Key]) -> None:
        """Score new keys and keep them."""
        keys = [k for k in dict.fromkeys(keys) if k not in self.scores]
        if keys:
            values = self.evaluate(keys).tolist()
            self.scores.update(zip(keys, values, strict=True))

    def ranked(self) -> list[Key]:
        """Keys by fitness, best first (first scored first among ties)."""
        return sorted(self.scores, key=lambda k: -self.scores[k])

    def best(self) -> tuple[Key, float]:
        key = self.ranked()[0]
        return key, self.scores[key]

    def _fill(self, out: list[Key], make: Callable[[], Key | None], n: int) -> None:
        made = 0
        for _ in range(n + 64):
            key = make()
            if key is None or not key or key in self.scores or key in out:
                continue
            out.append(key)
            made += 1
            if made == n:
                return

    def generation(
        self, pool: Sequence[int], counts: dict[str, int], mutation_size: int, min_remove: int
    ) -> None:
        """One epoch: add / remove / replace around each top set, then mutation and crossover."""
        g, ranked = self.generator, self.ranked()
        tops = ranked[: self.top]
        if len(tops) < self.top:
            tops = [tops[randint(g, 0, len(tops) - 1)] for _ in range(self.top)]
        out: list[Key] = []
        for key in tops:
            self._edits(out, key, [i for i in pool if i not in key], counts, min_remove)
        if mutation_size <= len(pool):
            self._fill(out, lambda: frozenset(choose(g, pool, mutation_size)), counts["mutation"])
        self._crossover(out, ranked[: self.top], counts["crossover"])
        self.add(out)

    def _edits(
        self, out: list[Key], key: Key, free: list[int], counts: dict[str, int], min_remove: int
    ) -> None:
        """Around one top set: add one unused id, remove one, replace one."""
        g, members = self.generator, sorted(key)
        if free:
            self._fill(out, lambda: key | {choose(g, free, 1)[0]}, counts["add"])
        if len(key) > min_remove:
            self._fill(out, lambda: key - {choose(g, members, 1)[0]}, counts["remove"])
        if free:
            self._fill(
                out, lambda: (key - {choose(g, members, 1)[0]}) | {choose(g, free, 1)[0]}, counts["replace"]
            )

    def _crossover(self, out: list[Key], tops: list[Key], n: int) -> None:
        """Ids common to all top sets plus a random-size subset of the others, drawn with
        probability ∝ how many top sets hold them."""
        tally: dict[int, int] = {}
        for key in tops:
            for i in sorted(key):
                tally[i] = tally.get(i, 0) + 1
        common = frozenset(i for i, c in tally.items() if c == len(tops))  # held by every top set
        rest = [i for i, c in tally.items() if c != len(tops)]
        if len(rest) <= 1:
            return
        weights = [float(tally[i]) for i in rest]

        def make() -> Key:
            size = randint(self.generator, 1, len(rest))
            return common | frozenset(choose(self.generator, rest, size, weights))

        self._fill(out, make, n)


def log_count(num_classes: int, factor: float) -> int:
    """⌊factor · ln C⌋, at least 1 (the caps on classes considered and group size)."""
    return max(1, int(factor * math.log(max(num_classes, 2))))
