"""A real HTTP server on 127.0.0.1 (a thread of the test) that answers POSTs from a script: the
OpenAI-compatible teacher the HTTP backend's tests talk to (tests/test_hostile.py, tests/test_reliability.py).

    with ScriptedServer([(429, {"Retry-After": "1"}, {"error": "slow down"}), "cut"]) as server:
        ...  # point OpenAIBackend at server.url; server.received lists what it was sent
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple


def ok_reply(text: str = "Paris.") -> dict[str, Any]:
    """A completion as an OpenAI-compatible server sends it."""
    return {"choices": [{"text": text, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2}}


class Received(NamedTuple):
    at: float  # time.monotonic() when it arrived
    headers: dict[str, str]
    body: Any  # the request's JSON


class ScriptedServer:
    """Each POST takes the next reply of the script; once the script is used up, every reply is
    `ok_reply()`. A reply is (status, headers, body), the body JSON-encoded unless it is bytes already,
    or "cut": a 200 that promises 1000 bytes, sends 20 and closes the connection."""

    def __init__(self, replies):
        self.replies, self.received, lock = list(replies), [], threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    outer.received.append(Received(time.monotonic(), dict(self.headers), body))
                    reply = outer.replies.pop(0) if outer.replies else (200, {}, ok_reply())
                if reply == "cut":
                    self.send_response(200)
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"choices": [{"text"')
                    self.wfile.flush()
                    self.close_connection = True
                    return
                status, headers, content = reply
                data = content if isinstance(content, bytes) else json.dumps(content).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
