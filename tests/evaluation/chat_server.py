"""A deterministic OpenAI-compatible chat server on 127.0.0.1 for the judge tests: ``reply(request body) -> text``."""

from __future__ import annotations

import contextlib
import http.server
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator


@dataclass
class ChatServer:
    url: str
    requests: list[dict[str, Any]] = field(default_factory=list)


@contextlib.contextmanager
def chat_server(reply: Callable[[dict[str, Any]], str]) -> Iterator[ChatServer]:
    """Serve ``/v1/chat/completions`` with ``reply``'s text for every request (recorded in ``.requests``)."""
    requests: list[dict[str, Any]] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            requests.append(body)
            message = {"role": "assistant", "content": reply(body)}
            data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                               "choices": [{"index": 0, "finish_reason": "stop", "message": message}]}).encode()  # fmt: skip
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield ChatServer(f"http://127.0.0.1:{httpd.server_address[1]}/v1", requests)
    finally:
        httpd.shutdown()
        httpd.server_close()
