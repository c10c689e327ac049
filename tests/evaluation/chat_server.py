"""A deterministic OpenAI-compatible chat server on 127.0.0.1 for the judge and backend tests.

``reply(request body)`` gives the answer of every ``POST /v1/chat/completions``: a text, ``None`` (a message whose
content is null), or a :class:`Raw` sent as it is (the failure modes: :func:`http_error` for an HTTP 500 or 400
with an OpenAI-style error body, ``Raw(200, "<html>...", "text/html")`` for a body that is not JSON).
``GET /v1/models`` lists ``models``. A streamed request (``"stream": true``) gets its text as server-sent events,
one chunk per word, a finish reason and ``[DONE]``; a :class:`Stream` says otherwise (no finish reason, no
``[DONE]``, the connection dropped midway), and :class:`Hang` accepts a request and never answers it (the server
records when the client gives up and closes the connection, in ``.abandoned``).
"""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
import time
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


@dataclass
class Stream:
    """A streamed answer: ``pieces`` as chunks, then ``finish`` (a finish reason, or None for none) and ``[DONE]``
    when ``done``; ``drop``: close the connection after the pieces, mid-chunk, sending nothing more."""

    pieces: list[str]
    finish: str | None = "stop"
    done: bool = True
    drop: bool = False


class Hang:
    """Accept the request and never answer it."""


Reply = Union[str, None, Raw, Stream, Hang]


@dataclass
class ChatServer:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)
    listings: list[str] = field(default_factory=list)  # the path of every GET /v1/models
    abandoned: list[float] = field(default_factory=list)  # when a client closed a hung request (time.monotonic())


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
            if isinstance(answer, Hang):
                self.connection.settimeout(None)
                while self.connection.recv(1024):  # until the client closes the connection
                    pass
                server.abandoned.append(time.monotonic())
                self.close_connection = True
                return
            if body.get("stream") and not isinstance(answer, Raw):
                self._stream(body, answer if isinstance(answer, Stream) else Stream((answer or "").split(" ")))
                return
            if isinstance(answer, Raw):
                self._send(answer.status, answer.body.encode(), answer.content_type)
                return
            message = {"role": "assistant", "content": answer}
            data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}).encode()  # fmt: skip
            self._send(200, data, "application/json")

        def _stream(self, body: dict[str, Any], stream: Stream) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()

            def send(data: str) -> None:
                event = f"data: {data}\n\n".encode()
                self.wfile.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
                self.wfile.flush()

            def chunk(delta: dict[str, Any], finish: str | None) -> str:
                return json.dumps({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})  # fmt: skip

            for i, piece in enumerate(stream.pieces):
                send(chunk({"content": piece if i == 0 else " " + piece}, None))
            if stream.drop:
                self.wfile.write(b"5\r\ndata:")  # a chunk cut short, then the connection closes
                self.wfile.flush()
                self.close_connection = True
                return
            if stream.finish is not None:
                send(chunk({}, stream.finish))
            if stream.done:
                send("[DONE]")
            self.wfile.write(b"0\r\n\r\n")
            self.close_connection = True

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
