"""Real HTTP servers on 127.0.0.1 (threads of the test): the OpenAI-compatible teachers the HTTP
backend's tests talk to. ScriptedServer answers POSTs from a script (tests/test_hostile.py,
tests/test_reliability.py); TeacherServer answers every request on its own thread, like a server with
continuous batching, and counts what is in flight (tests/test_synth_stream.py).

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


class TeacherServer:
    """A real HTTP server on 127.0.0.1 that answers completions like a teacher with continuous batching:
    every request is answered on its own thread, after `delay(prompt)` seconds, with a text that depends
    on the prompt only (so two runs can be compared row for row). It counts what is in flight, and can
    hold one request until a condition holds. GET /metrics answers `metrics` (a vLLM server's
    Prometheus text) where given, 404 otherwise.

        with TeacherServer(delay=lambda prompt: 0.1) as server:
            ...  # point the `openai` backend at server.url; server.prompts lists what it was sent
    """

    def __init__(self, delay=lambda prompt: 0.0, metrics: str | None = None, refuse: str | None = None):
        self.delay, self.metrics, self.refuse = delay, metrics, refuse  # refuse: a 400 for prompts holding it
        self.prompts: list[str] = []
        self.in_flight = self.answered = self.most_in_flight = 0
        self.hold: tuple | None = None  # (prompt substring, condition(): bool, timeout s)
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                found = self.path == "/metrics" and outer.metrics is not None
                data = outer.metrics.encode() if found else b"not found"
                self.send_response(200 if found else 404)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self):  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["prompt"]
                with outer.lock:
                    outer.prompts.append(prompt)
                    outer.in_flight += 1
                    outer.most_in_flight = max(outer.most_in_flight, outer.in_flight)
                try:
                    outer._wait(prompt)
                    question = prompt.rsplit("<|im_start|>user\n", 1)[-1].split("<|im_end|>")[0]
                    refused = outer.refuse is not None and outer.refuse in prompt
                    reply = {"error": {"message": "too long"}} if refused else ok_reply(f"Answer to: {question}")
                    data = json.dumps(reply).encode()
                    self.send_response(400 if refused else 200)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                finally:
                    with outer.lock:
                        outer.in_flight -= 1
                        outer.answered += 1

            def log_message(self, *args):
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 1024  # hundreds of connections at once (socketserver's default backlog is 5)
            daemon_threads = True

            def handle_error(self, request, client_address):
                pass  # a client killed mid-request: its replies have nowhere to go

        self.server = Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def _wait(self, prompt: str) -> None:
        hold = self.hold
        if hold is not None and hold[0] in prompt:
            _, condition, timeout = hold
            deadline = time.monotonic() + timeout
            while not condition() and time.monotonic() < deadline:
                time.sleep(0.01)
        time.sleep(self.delay(prompt))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
