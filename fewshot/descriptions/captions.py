"""Per-image captions for methods that fine-tune on image-text pairs (GIST).

Each support image gets a few short texts about what it shows. Three sources, each named in
the run's record (``fit.captions``):

- ``matched``: the image's matched descriptions (the class's descriptions that CLIP scores
  highest for this image) are the captions themselves, unshortened. No LLM is needed.
- ``llm``: the matched descriptions are shortened by an LLM behind an OpenAI-compatible
  chat-completions endpoint, with the client, answer cache and retries of
  ``fewshot describe``. One request per distinct prompt (images of a class with the same
  matched descriptions share one); the prompt is ours (:data:`SUMMARY_PROMPT`: the GIST
  authors released their captions but not the code or prompt that wrote them). An answer
  that does not hold one caption per description leaves that image its matched
  descriptions, and the record counts such images.
- ``published``: a released captions file in GIST's ``captions_top5.json`` layout, a JSON
  object mapping an image path (relative to the dataset's image folder) to its list of
  captions, best match first. A support image whose path ends with a key takes that
  key's captions; an image the file does not cover keeps its matched descriptions, and
  the record counts both.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fewshot.descriptions.generate import AnswerCache, Asker, Endpoint, RetryPolicy, make_client, run_all
from fewshot.descriptions.prompts import AnswerError, Style, article, parse_bullets
from fewshot.types import ConfigError

__all__ = [
    "CAPTION_SOURCES",
    "SUMMARY_PROMPT",
    "load_published_captions",
    "published_lookup",
    "summarise",
    "summary_prompt",
]

CAPTION_SOURCES = ("matched", "llm", "published")

SUMMARY_PROMPT = (
    "Each line below describes a photo of {article} {classname}.\n{numbered}\n"
    "Shorten every line into one caption of at most 15 words that keeps what can be seen "
    "in the photo. Answer with exactly {count} lines in the same order, each starting with '- '."
)
SUMMARY_SAMPLING: dict[str, Any] = {"temperature": 0.0, "max_tokens": 400}


def summary_prompt(classname: str, descriptions: Sequence[str]) -> str:
    """The summarisation prompt for one image's matched ``descriptions``."""
    name = classname.replace("_", " ")
    numbered = "\n".join(f"{i}. {text}" for i, text in enumerate(descriptions, 1))
    return SUMMARY_PROMPT.format(
        article=article(name), classname=name, numbered=numbered, count=len(descriptions)
    )


def _parse_captions(count: int) -> Any:
    """A parser that keeps an answer of exactly ``count`` bulleted captions, else nothing."""

    def parse(text: str) -> list[str]:
        try:
            captions = parse_bullets(text)
        except AnswerError:
            return []
        return captions if len(captions) == count else []

    return parse


def summarise(
    requests: Mapping[str, tuple[str, Sequence[str]]],
    endpoint: Endpoint,
    cache: AnswerCache,
    *,
    concurrency: int = 4,
    retry: RetryPolicy | None = None,
    client: Any = None,
) -> tuple[dict[str, list[str] | None], int]:
    """Shortened captions per image, and the number of HTTP requests sent.

    ``requests`` maps an image id to ``(classname, matched descriptions)``; an image gets
    one caption per description, or None when the answer did not hold exactly that many
    (the caller then keeps its matched descriptions). Images with the same prompt share one
    request. Answers are cached (keyed by model, endpoint, prompt), so a rerun asks only
    what is not cached; without an API key, only cached answers can be read.
    """
    prompts = {key: summary_prompt(name, texts) for key, (name, texts) in requests.items()}
    unique: dict[str, tuple[str, int]] = {}
    for key, (name, texts) in requests.items():
        unique.setdefault(prompts[key], (name, len(texts)))
    answers: dict[str, list[str]] = {}
    sent = 0
    for count in sorted({n for _, n in unique.values()}):  # one parser per caption count
        style = Style("gist-summary", "{question}", (), _parse_captions(count), dict(SUMMARY_SAMPLING))
        asker = Asker(client, endpoint, style, cache, retry or RetryPolicy())
        todo = [prompt for prompt, (_, n) in unique.items() if n == count]
        if any(cache.get(asker.identity(unique[p][0], p)) is None for p in todo):
            if not endpoint.api_key:
                raise ConfigError(
                    "gist captions=llm has answers to ask for and no API key: set $OPENAI_API_KEY "
                    "(any text for a local server that needs none)."
                )
            asker.client = client or make_client(endpoint)

        def one(prompt: str, asker: Asker = asker) -> None:
            answers[prompt] = asker.answer(unique[prompt][0], prompt)

        run_all(one, todo, max(1, concurrency), asker.stop)
        sent += asker.requests
    return {key: answers[prompts[key]] or None for key in requests}, sent


def load_published_captions(path: str | Path) -> dict[str, list[str]]:
    """A captions file: a JSON object of image path -> non-empty list of strings."""
    path = Path(path).expanduser()
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"Cannot read the captions file {path}: {exc.strerror or exc}.") from None
    except ValueError as exc:
        raise ConfigError(f"The captions file {path} is not valid JSON ({exc}).") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(
            f"The captions file {path} must be a JSON object of image path -> list of captions "
            "(GIST's captions_top5.json layout)."
        )
    for key, value in data.items():
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(
                f"The captions file {path}: entry {key!r} must be a non-empty list of captions (strings)."
            )
    return {_clean(str(key)): list(value) for key, value in data.items()}


def _clean(path: str) -> str:
    """A key as a relative path with forward slashes (no leading "./" or "/")."""
    path = path.replace("\\", "/")
    while path.startswith("./"):
        path = path[2:]
    return path.lstrip("/")


def published_lookup(captions: Mapping[str, list[str]], image_path: str) -> list[str] | None:
    """The captions of the image at ``image_path`` (relative to the dataset folder): those of
    the longest key that ends its path at a folder boundary, or None."""
    path = image_path.replace("\\", "/")
    parts = path.split("/")
    for start in range(len(parts)):  # longest suffix first
        found = captions.get("/".join(parts[start:]))
        if found is not None:
            return found
    return None
