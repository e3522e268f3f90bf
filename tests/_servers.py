"""A local HTTP server on 127.0.0.1 for the tests of code that talks HTTP (no network)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


@contextmanager
def local_server(
    monkeypatch: pytest.MonkeyPatch, handler: type[BaseHTTPRequestHandler]
) -> Iterator[ThreadingHTTPServer]:
    """``handler`` served on a free port of 127.0.0.1 in a thread (proxies bypassed), shut
    down on exit. The handler reaches test state through ``self.server``."""
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setenv("NO_PROXY", "*")
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


def send_json(handler: BaseHTTPRequestHandler, status: int, payload: object) -> None:
    """Answer ``handler``'s request with ``payload`` as JSON and ``status``."""
    data = json.dumps(payload).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def chat_completion(model: str, content: str) -> dict[str, object]:
    """An OpenAI chat-completions response body with one choice."""
    choice = {"index": 0, "message": {"role": "assistant", "content": content}, "finish_reason": "stop"}
    return {"id": "x", "object": "chat.completion", "created": 0, "model": model, "choices": [choice]}
