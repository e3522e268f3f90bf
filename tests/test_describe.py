"""``fewshot describe`` against a fake OpenAI-compatible server started on 127.0.0.1.

The server answers POST /v1/chat/completions with canned answers built from the prompt (a
bulleted list naming the class, or one sentence per sample), counts every request, and can
be told to fail: a status for the next requests, every request after N successes, or an
unreadable answer for one class. The expected prompts and provenance are written here from
the styles' descriptions (DCLIP's question form, CuPL's five questions with n=10 at
temperature 0.99), not read back from the code under test.
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from fewshot.cli import app
from fewshot.datasets import get_dataset

from ._servers import local_server, send_json

pytest.importorskip("openai", reason="the llm extra: pip install -e '.[llm]'")

KEY = "sk-test-SECRET-0123456789"
TOY = list(get_dataset("toy-objects", "/nonexistent").spec().classnames)


@dataclasses.dataclass
class Fake:
    url: str = ""
    bodies: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    auth: list[str] = dataclasses.field(default_factory=list)
    statuses: list[int] = dataclasses.field(default_factory=list)  # forced statuses, in order
    fail_after: int | None = None  # successes before every request fails with 500
    malformed: str = ""  # class whose answer is prose, not a list
    successes: int = 0
    lock: threading.Lock = dataclasses.field(default_factory=threading.Lock)

    @property
    def requests(self) -> int:
        return len(self.bodies)


def _classname(prompt: str) -> str:
    last = prompt.rsplit("Q:", 1)[-1]
    match = re.search(r"(?:distinguishing|tell) an? (.+?) (?:in a photo\?|apart)", last) or re.search(
        r"(?:of|identify|what|does) an? (.+?)(?: looks like| look like\?|\?|:|$)", last
    )
    return match[1] if match else "?"


def _answer(fake: Fake, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    with fake.lock:
        if fake.statuses:
            status = fake.statuses.pop(0)
            return status, {"error": {"message": f"forced {status} for key {KEY}", "type": "x"}}
        if fake.fail_after is not None and fake.successes >= fake.fail_after:
            return 500, {"error": {"message": "down", "type": "server_error"}}
        fake.successes += 1
    prompt = body["messages"][-1]["content"]
    name = _classname(prompt)
    n = int(body.get("n", 1))
    if name == fake.malformed:
        texts = ["I would rather not say."]
    elif "distinguishing" in prompt or "apart from" in prompt:
        texts = [f"- {name} shape\n- {name} colour\n"]
    else:
        texts = [f"A {name} sample {i}" for i in range(n)]
    choices = [
        {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
        for i, t in enumerate(texts)
    ]
    return 200, {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": choices,
    }


class _Handler(BaseHTTPRequestHandler):
    server: Any

    def do_POST(self) -> None:
        fake: Fake = self.server.fake
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with fake.lock:
            fake.bodies.append(body)
            fake.auth.append(self.headers.get("Authorization", ""))
        status, payload = _answer(fake, body) if self.path == "/v1/chat/completions" else (404, {})
        send_json(self, status, payload)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fake]:
    with local_server(monkeypatch, _Handler) as server:
        server.fake = Fake(url=f"http://127.0.0.1:{server.server_port}/v1")  # type: ignore[attr-defined]
        yield server.fake  # type: ignore[attr-defined]


def describe(fake: Fake, tmp_path: Path, *args: str, key: str = KEY) -> tuple[int, str]:
    argv = ["describe", "toy-objects", "--base-url", fake.url, "--model", "fake", "--backoff", "0.001"]
    argv += ["--data-root", str(tmp_path / "data"), "--cache-dir", str(tmp_path / "cache"), *args]
    result = CliRunner().invoke(app, argv, env={"OPENAI_API_KEY": key, "COLUMNS": "200"})
    return result.exit_code, result.output


def read_set(tmp_path: Path, name: str) -> dict[str, Any]:
    return json.loads((tmp_path / "data" / "descriptions" / "toy-objects" / f"{name}.json").read_text())


def all_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_dclip_set_written_with_provenance_and_second_run_sends_nothing(fake: Fake, tmp_path: Path) -> None:
    code, out = describe(fake, tmp_path)
    assert code == 0, out
    assert fake.requests == len(TOY)  # one question per class
    assert set(fake.auth) == {f"Bearer {KEY}"}
    body = fake.bodies[0]
    assert body["temperature"] == 0 and body["max_tokens"] == 100 and "n" not in body
    asked = sorted(_classname(b["messages"][-1]["content"]) for b in fake.bodies)
    assert asked == sorted(TOY)
    doc = read_set(tmp_path, "dclip-fake")
    assert doc["fewshot_descriptions"] == 1 and doc["name"] == "dclip-fake" and doc["kind"] == "descriptions"
    assert list(doc["classes"]) == TOY
    assert doc["classes"]["red circle"] == ["red circle shape", "red circle colour"]
    prov = doc["provenance"]
    assert prov["model"] == "fake" and prov["style"] == "dclip" and prov["dataset"] == "toy-objects"
    assert prov["endpoint_host"] == fake.url.split("/")[2]  # host:port, not the URL
    assert prov["sampling"] == {"temperature": 0.0, "max_tokens": 100, "n": 1}
    assert "distinguishing" in prov["prompt_template"] and prov["fewshot_version"] and prov["date"]
    first = (tmp_path / "data" / "descriptions" / "toy-objects" / "dclip-fake.json").read_text()

    code, out = describe(fake, tmp_path)
    assert code == 0, out
    assert fake.requests == len(TOY)  # zero new requests: all from the cache
    again = json.loads((tmp_path / "data" / "descriptions" / "toy-objects" / "dclip-fake.json").read_text())
    assert again["classes"] == json.loads(first)["classes"]
    assert KEY not in all_text(tmp_path)  # not in the set, not in the cache


def test_cupl_questions_and_sampling(fake: Fake, tmp_path: Path) -> None:
    code, out = describe(fake, tmp_path, "--style", "cupl", "--name", "mine")
    assert code == 0, out
    assert fake.requests == 5 * len(TOY)
    body = fake.bodies[0]
    assert (
        body["n"] == 10 and body["temperature"] == 0.99 and body["max_tokens"] == 50 and body["stop"] == ["."]
    )
    prompts = {b["messages"][-1]["content"] for b in fake.bodies}
    assert {
        "Describe what a red circle looks like",
        "How can you identify a red circle?",
        "What does a red circle look like?",
        "Describe an image from the internet of a red circle",
        "A caption of an image of a red circle:",
    } <= prompts
    classes = read_set(tmp_path, "mine")["classes"]
    assert len(classes["red circle"]) == 50 and classes["red circle"][0] == "A red circle sample 0."


def test_interrupted_run_resumes_with_missing_classes_only(fake: Fake, tmp_path: Path) -> None:
    fake.fail_after = 5
    code, out = describe(fake, tmp_path, "--concurrency", "1", "--attempts", "2")
    assert code == 2
    assert "failed after 2 attempts" in out and "run the command again" in out.lower()
    assert not (tmp_path / "data" / "descriptions" / "toy-objects" / "dclip-fake.json").exists()
    fake.fail_after, before = None, fake.requests
    code, out = describe(fake, tmp_path)
    assert code == 0, out
    assert fake.requests - before == len(TOY) - 5
    asked = {_classname(b["messages"][-1]["content"]) for b in fake.bodies[before:]}
    assert len(asked) == len(TOY) - 5


@pytest.mark.parametrize("status", [429, 500, 503])
def test_transient_errors_are_retried(fake: Fake, tmp_path: Path, status: int) -> None:
    fake.statuses = [status, status]
    code, out = describe(fake, tmp_path, "--concurrency", "1")
    assert code == 0, out
    assert fake.requests == len(TOY) + 2
    assert len(read_set(tmp_path, "dclip-fake")["classes"]) == len(TOY)


def test_client_error_fails_at_once_and_hides_the_key(fake: Fake, tmp_path: Path) -> None:
    fake.statuses = [401]
    code, out = describe(fake, tmp_path, "--concurrency", "1")
    assert code == 2 and fake.requests == 1
    assert "HTTP 401" in out and "***" in out and KEY not in out
    assert KEY not in all_text(tmp_path)


def test_malformed_answer_is_one_clear_error(fake: Fake, tmp_path: Path) -> None:
    fake.malformed = "blue square"
    code, out = describe(fake, tmp_path, "--concurrency", "1")
    assert code == 2
    line = " ".join(out.split())
    assert "Class 'blue square': malformed answer: expected a bulleted list" in line
    assert "I would rather not say." in line and "Traceback" not in out


def test_confusion_aware_names_nearest_classes(fake: Fake, tmp_path: Path) -> None:
    import torch

    from fewshot.backbones import load_backbone

    code, out = describe(fake, tmp_path, "--style", "confusion-aware", "--neighbours", "2", "--name", "ca")
    assert code == 0, out
    feats = load_backbone("toy").encode_texts(TOY)
    sims = (feats @ feats.T).fill_diagonal_(-2.0)
    i = TOY.index("red circle")
    nearest = [TOY[j] for j in torch.argsort(sims[i], descending=True)[:2].tolist()]
    prompt = next(
        b["messages"][-1]["content"]
        for b in fake.bodies
        if "a red circle apart" in b["messages"][-1]["content"]
    )
    assert f"from {nearest[0]}, {nearest[1]} in a photo" in prompt
    assert read_set(tmp_path, "ca")["provenance"]["neighbours"] == {"k": 2, "backbone": "toy"}


def test_no_key_is_an_error(fake: Fake, tmp_path: Path) -> None:
    code, out = describe(fake, tmp_path, key="")
    assert code == 2 and "OPENAI_API_KEY" in out and fake.requests == 0


def test_cache_key_holds_the_model(fake: Fake, tmp_path: Path) -> None:
    assert describe(fake, tmp_path)[0] == 0
    argv = [
        "describe",
        "toy-objects",
        "--base-url",
        fake.url,
        "--model",
        "other",
        "--data-root",
        str(tmp_path),
    ]
    argv += ["--cache-dir", str(tmp_path / "cache")]
    result = CliRunner().invoke(app, argv, env={"OPENAI_API_KEY": KEY})
    assert result.exit_code == 0, result.output
    assert fake.requests == 2 * len(TOY)  # another model: asked again
    assert {b["model"] for b in fake.bodies} == {"fake", "other"}


def test_endpoint_host_and_scrub_drop_credentials() -> None:
    from fewshot.descriptions.generate import Endpoint

    endpoint = Endpoint("https://user:pa55word@llm.example:8443/v1", "m", KEY)
    assert endpoint.host == "llm.example:8443"
    assert endpoint.scrub(f"bad key {KEY} at https://user:pa55word@llm.example") == (
        "bad key *** at https://user:***@llm.example"
    )
    assert KEY not in repr(endpoint)


def test_an_existing_set_with_other_sentences_is_kept_unless_force(fake: Fake, tmp_path: Path) -> None:
    assert describe(fake, tmp_path)[0] == 0
    path = tmp_path / "data" / "descriptions" / "toy-objects" / "dclip-fake.json"
    doc = json.loads(path.read_text())
    doc["classes"]["red circle"] = ["a hand-edited sentence"]
    path.write_text(json.dumps(doc))
    edited = path.read_text()
    code, out = describe(fake, tmp_path)
    assert code != 0 and "exists with other content" in out
    assert path.read_text() == edited  # nothing already written is lost
    code, out = describe(fake, tmp_path, "--force")
    assert code == 0, out
    replaced = read_set(tmp_path, "dclip-fake")["classes"]["red circle"]
    assert replaced == ["red circle shape", "red circle colour"]
