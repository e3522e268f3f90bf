"""Generating description sets with an LLM behind any OpenAI-compatible chat-completions endpoint.

:func:`generate_set` asks the questions of a :mod:`~fewshot.descriptions.prompts` style for
every class of a dataset and returns a :class:`~fewshot.descriptions.DescriptionSet` whose
provenance records the model, the endpoint's host, the prompt template and questions, the
sampling parameters, the style, the date and the fewshot version (never the API key, never
the full URL).

- Requests go through the official ``openai`` client (the ``llm`` extra), classes in a thread
  pool of ``concurrency`` workers. The client's own retries are off: 429, 5xx, timeouts and
  lost connections are retried here with exponential backoff (:class:`RetryPolicy`), other
  HTTP errors fail at once.
- Every answer that reads well is cached on disk (:class:`AnswerCache`), as the endpoint sent
  it (parsed again on every read, so a parser fix reaches cached answers), under a key made
  of the model, the endpoint host and path, the style, the prompt text, the sampling
  parameters and the class, so a repeated or interrupted run asks only what is not cached.
- A malformed answer is one error line naming the class and what was wrong; the API key is
  scrubbed from every message that reaches the user.
"""

from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

import fewshot
from fewshot._io import atomic_write_text
from fewshot.descriptions import DescriptionSet
from fewshot.descriptions.prompts import AnswerError, Style
from fewshot.types import ConfigError, FewshotError

__all__ = [
    "ANSWERS_DIR",
    "AnswerCache",
    "Asker",
    "Endpoint",
    "GenerationError",
    "RetryPolicy",
    "generate_set",
    "make_client",
    "nearest_classes",
    "run_all",
]

CACHE_FORMAT = 2  # 2: raw answer texts (1 held parsed sentences)
ANSWERS_DIR = "llm-answers"  # the answer cache's folder under the cache root


class GenerationError(FewshotError):
    """The endpoint failed, or answered something that cannot be read."""


@dataclass(frozen=True)
class Endpoint:
    """Where to ask: an OpenAI-compatible base URL, a model name, and the key (never shown)."""

    base_url: str
    model: str
    api_key: str = field(repr=False)

    def __post_init__(self) -> None:
        parts = urllib.parse.urlsplit(self.base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"Bad --base-url {self.host_or_raw!r}: give http(s)://HOST[:PORT]/PATH.")

    @property
    def host(self) -> str:
        """``host[:port]`` of the base URL: what provenance and cache keys record."""
        parts = urllib.parse.urlsplit(self.base_url)
        host = parts.hostname or ""
        return f"{host}:{parts.port}" if parts.port else host

    @property
    def host_or_raw(self) -> str:
        # For the error about a bad URL: never echo user:password@ parts.
        return self.base_url.rsplit("@", 1)[-1]

    def scrub(self, text: str) -> str:
        """``text`` with the API key (and the URL's credentials, if any) replaced by ``***``."""
        secrets = [self.api_key, urllib.parse.urlsplit(self.base_url).password or ""]
        for secret in secrets:
            if secret and len(secret) >= 4:
                text = text.replace(secret, "***")
        return text


@dataclass(frozen=True)
class RetryPolicy:
    """Attempts per request, and the backoff before attempt i+1: ``backoff_s * 2**i`` (capped)."""

    attempts: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0

    def delay(self, attempt: int) -> float:
        return float(min(self.max_backoff_s, self.backoff_s * 2**attempt))


# ------------------------------------------------------------------------------------------
# The answer cache


class AnswerCache:
    """Raw answer texts on disk, one JSON file per request identity (no key, no credentials)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(identity: Mapping[str, Any]) -> str:
        canonical = json.dumps(dict(identity), sort_keys=True, ensure_ascii=False, separators=(",", ":"))
        return hashlib.sha256(f"{CACHE_FORMAT}\n{canonical}".encode()).hexdigest()

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, identity: Mapping[str, Any]) -> list[str] | None:
        path = self._path(self.key(identity))
        try:
            entry = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        answers = entry.get("answers") if isinstance(entry, dict) else None
        if not isinstance(answers, list) or not all(isinstance(a, str) for a in answers):
            return None
        return answers

    def put(self, identity: Mapping[str, Any], answers: Sequence[str]) -> None:
        entry = {"format": CACHE_FORMAT, "request": dict(identity), "answers": list(answers)}
        atomic_write_text(self._path(self.key(identity)), json.dumps(entry, ensure_ascii=False) + "\n")


# ------------------------------------------------------------------------------------------
# Requests


def make_client(endpoint: Endpoint, timeout_s: float = 120.0) -> Any:
    """An ``openai.OpenAI`` client for ``endpoint`` with its own retries off."""
    try:
        import openai
    except ImportError:
        raise ConfigError(
            "fewshot describe needs the openai package: pip install 'fewshot[llm]' (or pip install openai)."
        ) from None
    return openai.OpenAI(
        base_url=endpoint.base_url, api_key=endpoint.api_key, max_retries=0, timeout=timeout_s
    )


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes timeouts
        return True
    status = getattr(exc, "status_code", None)
    return isinstance(exc, openai.APIStatusError) and (status == 429 or (status or 0) >= 500)


def _describe_error(exc: Exception) -> str:
    status = getattr(exc, "status_code", None)
    what = f"HTTP {status}" if status else type(exc).__name__
    message = str(getattr(exc, "message", "") or exc).strip()
    return f"{what}: {message[:200]}" if message else what


def _complete(
    client: Any, model: str, prompt: str, sampling: Mapping[str, Any], sent: Callable[[], None]
) -> list[str]:
    """The texts of ``sampling['n']`` sampled answers (more requests if a server sends fewer);
    ``sent()`` is called before every HTTP request."""
    n = int(sampling.get("n", 1))
    params = {k: v for k, v in sampling.items() if k != "n"}
    texts: list[str] = []
    while len(texts) < n:
        extra = {"n": n - len(texts)} if n > 1 else {}
        sent()
        response = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], **params, **extra
        )
        got = [choice.message.content or "" for choice in (response.choices or [])]
        if not got:
            raise AnswerError("the response holds no choices")
        texts.extend(got)
    return texts[:n]


@dataclass
class Asker:
    """Asks one style's questions for one class: cache first, then the endpoint with retries."""

    client: Any
    endpoint: Endpoint
    style: Style
    cache: AnswerCache
    retry: RetryPolicy
    stop: threading.Event = field(default_factory=threading.Event)
    requests: int = 0  # HTTP requests sent to the endpoint (all attempts)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def identity(self, classname: str, prompt: str) -> dict[str, Any]:
        return {
            "model": self.endpoint.model,
            "host": self.endpoint.host,
            "path": urllib.parse.urlsplit(self.endpoint.base_url).path.rstrip("/"),
            "style": self.style.name,
            "prompt": prompt,
            "sampling": dict(self.style.sampling),
            "class": classname,
        }

    def sentences(self, classname: str, neighbours: Sequence[str]) -> tuple[str, ...]:
        out: list[str] = []
        for prompt in self.style.prompts(classname, neighbours):
            out.extend(self.answer(classname, prompt))
        if not out:
            raise GenerationError(f"Class {classname!r}: every answer was empty; nothing to keep.")
        return tuple(out)

    def answer(self, classname: str, prompt: str) -> list[str]:
        """The parsed answer to one prompt about ``classname``: from the cache, else asked
        (with retries) and cached."""
        identity = self.identity(classname, prompt)
        texts = self.cache.get(identity)
        if texts is None:
            texts = self._ask(classname, prompt)
            self.cache.put(identity, texts)
        return self._parse(classname, texts)

    def _ask(self, classname: str, prompt: str) -> list[str]:
        for attempt in range(self.retry.attempts):
            try:
                texts = _complete(self.client, self.endpoint.model, prompt, self.style.sampling, self._sent)
            except AnswerError as exc:
                raise GenerationError(f"Class {classname!r}: malformed answer: {exc}.") from None
            except Exception as exc:
                if not _is_openai_error(exc):
                    raise
                if not _retryable(exc) or attempt + 1 == self.retry.attempts:
                    raise self._failure(classname, exc, attempt + 1) from None
                self.stop.wait(self.retry.delay(attempt))
                continue
            self._parse(classname, texts)  # only answers that read well are cached
            return texts
        raise AssertionError("unreachable")

    def _sent(self) -> None:
        """Before each HTTP request: stop if the run is stopping (an error elsewhere, Ctrl-C),
        else count it."""
        if self.stop.is_set():
            raise _Stopped
        with self._lock:
            self.requests += 1

    def _parse(self, classname: str, texts: list[str]) -> list[str]:
        sentences: list[str] = []
        for text in texts:
            try:
                sentences.extend(self.style.parse(text))
            except AnswerError as exc:
                message = self.endpoint.scrub(str(exc))
                raise GenerationError(f"Class {classname!r}: malformed answer: {message}.") from None
        return sentences

    def _failure(self, classname: str, exc: Exception, attempts: int) -> GenerationError:
        why = self.endpoint.scrub(_describe_error(exc))
        tries = f" after {attempts} attempts" if attempts > 1 else ""
        return GenerationError(
            f"Class {classname!r}: the endpoint {self.endpoint.host} failed{tries} ({why}). "
            "Answers received so far are cached: run the command again to resume."
        )


class _Stopped(Exception):
    """Another class failed; this one gives up before sending anything more."""


def _is_openai_error(exc: Exception) -> bool:
    import openai

    return isinstance(exc, openai.OpenAIError)


# ------------------------------------------------------------------------------------------
# Nearest classes (confusion-aware prompts)


def nearest_classes(classnames: Sequence[str], backbone: str, k: int) -> dict[str, list[str]]:
    """Each class's ``k`` nearest other classes by cosine similarity of the backbone's text
    embeddings of the class names (as written, ``_`` read as a space)."""
    import torch

    from fewshot.backbones import load_backbone

    names = list(classnames)
    k = min(k, len(names) - 1)
    if k <= 0:
        return {name: [] for name in names}
    with torch.no_grad():
        features = load_backbone(backbone).encode_texts([n.replace("_", " ") for n in names])
    similarity = features @ features.T
    similarity.fill_diagonal_(-float("inf"))
    order = similarity.topk(k, dim=1).indices.tolist()
    return {name: [names[j] for j in row] for name, row in zip(names, order, strict=True)}


# ------------------------------------------------------------------------------------------
# A whole set


def generate_set(
    name: str,
    classnames: Sequence[str],
    style: Style,
    endpoint: Endpoint,
    cache: AnswerCache,
    *,
    neighbours: Mapping[str, Sequence[str]] | None = None,
    concurrency: int = 4,
    retry: RetryPolicy | None = None,
    client: Any = None,
    console: Console | None = None,
    extra_provenance: Mapping[str, Any] | None = None,
) -> tuple[DescriptionSet, int]:
    """The description set for ``classnames``, and the number of requests sent.

    Classes are asked in parallel (``concurrency`` threads); the first failure stops the
    others from sending more and is raised as a :class:`GenerationError`.
    """
    asker = Asker(client or make_client(endpoint), endpoint, style, cache, retry or RetryPolicy())
    near = neighbours or {}
    results: dict[str, tuple[str, ...]] = {}
    with _progress(console) as progress:
        task = progress.add_task(f"{style.name} via {endpoint.host}", total=len(classnames))

        def one(classname: str) -> None:
            try:
                results[classname] = asker.sentences(classname, near.get(classname, ()))
            except BaseException:
                asker.stop.set()  # before the next class starts: nothing more is sent
                raise
            progress.advance(task)

        run_all(one, classnames, max(1, concurrency), asker.stop)
    classes = {c: results[c] for c in classnames}
    provenance = {**_provenance(style, endpoint), **(extra_provenance or {})}
    return DescriptionSet(name, classes, "descriptions", provenance), asker.requests


def run_all(one: Callable[[str], None], items: Sequence[str], workers: int, stop: threading.Event) -> None:
    """Run ``one`` on every item; on the first error (or Ctrl-C) stop the rest and raise it.

    Requests already in flight finish (their answers are cached); nothing new is sent.
    """
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fewshot-describe") as pool:
        futures: list[Future[None]] = [pool.submit(one, item) for item in items]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
        except BaseException:  # Ctrl-C in the main thread
            stop.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        if any(f.done() and f.exception() is not None for f in futures):
            stop.set()
            pool.shutdown(wait=True, cancel_futures=True)
            errors = [e for f in futures if f.done() and not f.cancelled() and (e := f.exception())]
            raise next((e for e in errors if not isinstance(e, _Stopped)), errors[0])


def _provenance(style: Style, endpoint: Endpoint) -> dict[str, Any]:
    return {
        "generator": "fewshot describe",
        "style": style.name,
        "model": endpoint.model,
        "endpoint_host": endpoint.host,
        "prompt_template": style.template,
        "questions": list(style.questions),
        "sampling": dict(style.sampling),
        "date": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "fewshot_version": fewshot.__version__,
    }


def _progress(console: Console | None) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True, markup=False),
        transient=True,
    )
