"""The prompt styles of ``fewshot describe``: what is asked per class and how answers are read.

Each :class:`Style` says which questions are sent for a class (chat messages, one user turn
each), with which sampling parameters, and how one answer becomes sentences. Three styles:

- ``dclip``: Menon & Vondrick, "Visual Classification via Description from Large Language
  Models" (ICLR 2023, arXiv 2210.07183); official code sachit-menon/classify_by_description_release
  ``generate_descriptors.py`` (``generate_prompt``, ``obtain_descriptors_and_save``) and
  ``descriptor_strings.py`` (``stringtolist``), commit d1a3d8920af89bd0d6a692ed3afeb277df46e082.
  There, one few-shot completion prompt per class: two worked examples, each a question
  "What are useful visual features for distinguishing a <thing> in a photo?" followed by an
  answer that opens with one fixed sentence and lists features as "- " lines; then the same
  question for the class (``_`` read as a space) and the opening of its answer. Sampling:
  temperature 0, max_tokens 100 (model text-davinci-003 in that file). The answer's "- "
  lines are the descriptors.
- ``cupl``: Pratt et al., "What does a platypus look like? Generating customized prompts for
  zero-shot image classification" (ICCV 2023, arXiv 2209.03320); official code
  sarahpratt/CuPL ``generate_image_prompts.py``, commit 719619c829792ff8f37298266e941b7f077c7f5c.
  There, five questions per class (describe what it looks like; how to identify it; what it
  looks like; describe an image of it from the internet; a caption of an image of it), each
  sampled n=10 times at temperature 0.99, max_tokens 50, stopping at the first "."; each
  sample (blank lines removed) plus "." is one sentence, so 50 sentences per class.
- ``confusion-aware``: ours, after DesCo's idea (arXiv 2306.14060) of describing a class
  together with the classes it is confused with. The question names the class's k nearest
  classes in the backbone's text-embedding space and asks for the visual features that tell
  the class apart from them, answered as a "- " list (temperature 0, max_tokens 150).

Deviations from the official scripts:

- Chat completions, not the retired completions endpoint: every prompt is one user message.
- ``dclip``: the two worked examples are our own (other objects, other features), written in
  the same question/answer shape; the question and the answer's opening line keep DCLIP's
  wording, with "a" or "an" as fits (DCLIP always writes "a"; its last question also drops
  the word "visual", which ours keeps). Answers are read more leniently than
  ``stringtolist``: lines starting with "-", "*", "•" or "1." / "1)" are items, and a first
  line without a marker counts too (a chat model continues the "-" the prompt ends with).
  Items are stripped of spaces.
- ``cupl``: the article is "an" before any vowel, upper or lower case (the script checks only
  upper-case vowels, so it writes "a apple"). Samples left empty are dropped, and a class
  whose answers are all empty is an error.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fewshot.types import FewshotError

__all__ = ["STYLES", "AnswerError", "Style", "article", "get_style"]


class AnswerError(FewshotError):
    """An answer the style cannot read (e.g. no bulleted list)."""


def article(noun: str) -> str:
    """ "an" before a vowel, else "a" (either case)."""
    return "an" if noun[:1].lower() in "aeiou" else "a"


@dataclass(frozen=True)
class Style:
    """One way to ask an LLM about a class."""

    name: str
    template: str  # the prompt text; {classname}, {article}, {neighbours} are filled per class
    questions: tuple[str, ...]  # the per-class question forms (one request each)
    parse: Callable[[str], list[str]]
    sampling: dict[str, Any] = field(default_factory=dict)  # temperature, max_tokens, n, stop
    neighbours: int = 0  # how many nearest classes the prompt names (confusion-aware only)

    def prompts(self, classname: str, neighbours: Sequence[str] = ()) -> list[str]:
        """The prompt texts for one class, one per question."""
        name = classname.replace("_", " ")
        listed = ", ".join(n.replace("_", " ") for n in neighbours)
        return [
            self.template.format(
                question=q.format(classname=name, article=article(name), neighbours=listed),
                classname=name,
                article=article(name),
                neighbours=listed,
            )
            for q in self.questions
        ]


_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)])\s*")


def parse_bullets(text: str) -> list[str]:
    """The items of a bulleted answer; an answer without any is an :class:`AnswerError`."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    items: list[str] = []
    for i, line in enumerate(lines):
        match = _BULLET.match(line)
        if match:
            items.append(line[match.end() :].strip())
        elif i == 0 and len(lines) > 1 and _BULLET.match(lines[1]):
            items.append(line.strip())  # continues the "-" that ends the prompt
    items = [item for item in items if item]
    if not items:
        shown = text.strip()[:80] or "an empty answer"
        raise AnswerError(f"expected a bulleted list ('- ' lines), got {shown!r}")
    return items


def parse_sentence(text: str) -> list[str]:
    """One sampled sentence, ending with "." (CuPL); empty samples give nothing."""
    sentence = text.replace("\n\n", "").strip()
    if not sentence:
        return []
    return [sentence if sentence.endswith(".") else sentence + "."]


_DCLIP_QUESTION = "What are useful visual features for distinguishing {article} {classname} in a photo?"
_DCLIP_OPENING = "There are several useful visual features to tell there is {article} {classname} in a photo:"
_DCLIP_EXAMPLES = (
    (
        "zebra",
        ["horse-like animal", "black and white stripes", "short upright mane", "hooves", "tufted tail"],
    ),
    (
        "teapot",
        ["kitchen vessel", "a rounded body", "a spout", "a handle opposite the spout", "a lid on top"],
    ),
)


def _dclip_template() -> str:
    shots = []
    for thing, features in _DCLIP_EXAMPLES:
        q = _DCLIP_QUESTION.format(article=article(thing), classname=thing)
        a = _DCLIP_OPENING.format(article=article(thing), classname=thing)
        shots.append(f"Q: {q}\nA: {a}\n" + "".join(f"- {f}\n" for f in features))
    # The examples hold no braces; the class's opening keeps its {article} / {classname} fields.
    return "\n".join(shots) + "\nQ: {question}\nA: " + _DCLIP_OPENING + "\n-"


_CUPL_QUESTIONS = (
    "Describe what {article} {classname} looks like",
    "How can you identify {article} {classname}?",
    "What does {article} {classname} look like?",
    "Describe an image from the internet of {article} {classname}",
    "A caption of an image of {article} {classname}:",
)

_CONFUSION_QUESTION = (
    "Q: What visual features tell {article} {classname} apart from {neighbours} in a photo? "
    "Answer with a list of short features, one per line, each starting with '- '.\nA:"
)

STYLES: dict[str, Style] = {
    "dclip": Style(
        "dclip",
        _dclip_template(),
        (_DCLIP_QUESTION,),
        parse_bullets,
        {"temperature": 0.0, "max_tokens": 100, "n": 1},
    ),
    "cupl": Style(
        "cupl",
        "{question}",
        _CUPL_QUESTIONS,
        parse_sentence,
        {"temperature": 0.99, "max_tokens": 50, "n": 10, "stop": ["."]},
    ),
    "confusion-aware": Style(
        "confusion-aware",
        "{question}",
        (_CONFUSION_QUESTION,),
        parse_bullets,
        {"temperature": 0.0, "max_tokens": 150, "n": 1},
        neighbours=5,
    ),
}


def get_style(name: str) -> Style:
    """The style called ``name``; an unknown one is an error that lists the styles."""
    if name not in STYLES:
        raise FewshotError(f"Unknown description style {name!r}; use one of {', '.join(STYLES)}.")
    return STYLES[name]
