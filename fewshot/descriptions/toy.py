"""The toy world's description sets, named ``toy``, built in code for every toy dataset.

They stand in for LLM output on the toy datasets, flaws included, so that methods that
read descriptions can be tested and compared without files or an endpoint:

- ``descriptions``: per class, the catalog's sentences (:func:`class_descriptions`, e.g. "a
  circle with no corners."), then one uninformative sentence (the same few for every class,
  e.g. "a shape in a picture."), and for every third class a misleading sentence: the first
  sentence of the next class in label order, as an LLM sometimes describes a neighbour;
- ``synonyms``: per class, two alternative names built from words the micro CLIP read in
  pretraining captions: a stand-in noun with one of the class's descriptor phrases ("shape
  that is round", "object with no corners"); a compound class gets its colour word with the
  shape's phrase ("red shape that is round") and its shape with the colour's phrase
  ("circle coloured like a tomato").

Everything is deterministic: the sets (and their hashes) change only when this module or
the catalog does.
"""

from __future__ import annotations

from fewshot.descriptions.sets import KINDS, DescriptionsError, DescriptionSet
from fewshot.toyworld.catalog import SHAPES, TOY_DATASETS, class_descriptions, class_descriptors

__all__ = ["TOY_SET", "is_toy", "toy_set"]

TOY_SET = "toy"  # the name of the built-in sets
_UNINFORMATIVE = ("a shape in a picture.", "an object on a background.", "a thing in a photo.")
_MISLEADING_EVERY = 3  # classes 1, 4, 7, ... get a neighbour's sentence


def is_toy(dataset: str) -> bool:
    """Whether ``dataset`` is a toy dataset (and so has the built-in ``toy`` sets)."""
    return dataset in TOY_DATASETS


def toy_set(dataset: str, kind: str) -> DescriptionSet:
    """The built-in ``toy`` set of ``kind`` for toy ``dataset``."""
    if not is_toy(dataset):
        raise DescriptionsError(f"{dataset} is not a toy dataset: the {TOY_SET!r} sets are the toy world's.")
    if kind not in KINDS:
        raise DescriptionsError(f"Unknown description kind {kind!r}; use one of {', '.join(KINDS)}.")
    names = TOY_DATASETS[dataset].classnames
    build = _descriptions if kind == "descriptions" else _synonyms
    classes = {name: build(names, i) for i, name in enumerate(names)}
    provenance = {"source": "toy", "generator": "fewshot.descriptions.toy", "dataset": dataset}
    return DescriptionSet(TOY_SET, classes, kind, provenance)


def _descriptions(names: tuple[str, ...], i: int) -> tuple[str, ...]:
    sentences = [*class_descriptions(names[i]), _UNINFORMATIVE[i % len(_UNINFORMATIVE)]]
    if i % _MISLEADING_EVERY == 1:
        sentences.append(class_descriptions(names[(i + 1) % len(names)])[0])
    return tuple(sentences)


def _synonyms(names: tuple[str, ...], i: int) -> tuple[str, ...]:
    words = names[i].split()
    if len(words) == 2:  # "red circle": colour + shape
        color, shape = words
        return (f"{color} shape {class_descriptors(shape)[0]}", f"{shape} {class_descriptors(color)[0]}")
    phrases = class_descriptors(names[i])
    noun = "shape" if names[i] in SHAPES else "thing"
    return (f"{noun} {phrases[0]}", f"object {phrases[1]}")
