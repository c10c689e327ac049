"""A deterministic OpenAI-compatible chat server on 127.0.0.1 for the judge and backend tests.

``reply(request body)`` gives the answer of every ``POST /v1/chat/completions``: a text, ``None`` (a message whose
content is null), or a :class:`Raw` sent as it is (the failure modes: :func:`http_error` for an HTTP 500 or 400
with an OpenAI-style error body, ``Raw(200, "<html>...", "text/html")`` for a body that is not JSON).
``GET /v1/models`` lists ``models``.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Union


@dataclass
class Raw:
    """A response sent as it is."""

    status: int
    body: str
    content_type: str = "application/json"


def http_error(status: int, message: str) -> Raw:
    """An error response with the OpenAI-style body vLLM and OpenAI send: ``{"error": {"message": ...}}``."""
    body = {"error": {"message": message, "type": "BadRequestError" if status < 500 else "InternalServerError",
                      "code": status}}  # fmt: skip
    return Raw(status, json.dumps(body))


Reply = Union[str, None, Raw]


@dataclass
class ChatServer:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    listings: list[str] = field(default_factory=list)  # the path of every GET /v1/models


@contextlib.contextmanager
def chat_server(
    reply: Callable[[dict[str, Any]], Reply], models: tuple[str, ...] | Raw = ("served-model",)
) -> Iterator[ChatServer]:
    """Serve ``/v1/chat/completions`` with ``reply``'s answer for every request (recorded in ``.requests``) and
    ``/v1/models`` listing ``models`` (or answering a :class:`Raw` as it is)."""
    server = ChatServer("")

    class Handler(http.server.BaseHTTPRequestHandler):
        def _send(self, status: int, data: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            if self.path.rstrip("/").endswith("/models"):
                server.listings.append(self.path)
                if isinstance(models, Raw):
                    self._send(models.status, models.body.encode(), models.content_type)
                    return
                listing = {"object": "list", "data": [{"id": m, "object": "model", "created": 0, "owned_by": "test"}
                                                      for m in models]}  # fmt: skip
                self._send(200, json.dumps(listing).encode(), "application/json")
            else:
                self._send(404, b'{"error": {"message": "not found"}}', "application/json")

        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            server.requests.append(body)
            answer = reply(body)
            if isinstance(answer, Raw):
                self._send(answer.status, answer.body.encode(), answer.content_type)
                return
            message = {"role": "assistant", "content": answer}
            data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}).encode()  # fmt: skip
            self._send(200, data, "application/json")

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    server.url = f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    try:
        yield server
    finally:
        httpd.shutdown()
        httpd.server_close()
