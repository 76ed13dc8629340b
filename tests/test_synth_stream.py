"""Synthetic data streamed through the teacher (issue 29): no batch waits for its longest generation,
every finished generation is stored at once and survives a failure or a real SIGKILL with hundreds of
requests in flight, the number in flight comes from the server, progress is in the bar and the summary.

The teacher is a real HTTP server in the test (tests/scripted_server.py: TeacherServer), reached through
the real `openai` backend; the real vLLM engine and server are in tests_vllm/."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO
from scripted_server import TeacherServer

import synth.stage as synth_stage
from pipeline.core.errors import UserError
from pipeline.core.recipe import load_recipe
from pipeline.core.summary import read_summary
from synth.store import ShardStore

SMOLALIGN = [sys.executable, "-m", "pipeline.cli"]


def questions(tmp_path, n: int):
    path = tmp_path / f"questions-{n}.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Question {i}: what is {i} + 1?"}]})
                            + "\n" for i in range(n)))
    return path


def recipe_body(tmp_path, prompts, url, out="synth", **backend) -> dict:
    return {"name": "t", "stage": "synth-traces", "output_dir": str(tmp_path / out),
            "teacher": {"name_or_path": "embedded:tiny-smollm3"}, "modes": ["no_think"],
            "prompts": {"sources": [{"path": str(prompts)}]},
            "filters": {"decontaminate": False, "dedup": "none"},
            "backend": {"kind": "openai", "base_url": url, "retry_budget_s": 0, **backend}}


def shard_lines(run_dir):
    path = next(p for p in [run_dir / "shards" / "shard-all.jsonl",
                            run_dir.with_name(run_dir.name + ".partial") / "shards" / "shard-all.jsonl"] if p.exists())
    return [json.loads(line) for line in path.read_text().splitlines()]


def jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_slow_generation_holds_up_no_other_prompt(write_recipe, tmp_path, tiny_model):
    """80 prompts, 8 in flight. The server holds the first prompt until it has received all 80: with
    lockstep batches (64 prompts, waiting for the longest) the last 16 are never sent while it waits, and
    it gives up after 20 s. Streaming sends each next prompt as a reply comes back, and stores each reply
    as it arrives, so the held one is the last row of the shard file."""
    prompts = questions(tmp_path, 80)
    with TeacherServer() as server:
        received_all = []
        server.hold = ("Question 0:", lambda: len(server.prompts) == 80, 20)
        original = server._wait

        def wait_and_note(prompt):
            original(prompt)
            if "Question 0:" in prompt:
                received_all.append(len(server.prompts) == 80)

        server._wait = wait_and_note
        out = synth_stage.run(load_recipe(write_recipe(recipe_body(tmp_path, prompts, server.url, concurrency=8))))
    assert received_all == [True], "the held prompt was answered before the others were all sent"
    assert server.most_in_flight <= 8
    rows = shard_lines(out)
    assert len(rows) == 80 and "Question 0:" in rows[-1]["messages"][-1]["content"]


def test_a_failed_request_keeps_every_finished_generation(write_recipe, tmp_path, tiny_model):
    """A prompt the server refuses (HTTP 400) fails the run with the server's reason, after every other
    prompt was sent and its reply stored (lockstep batches threw away the finished answers of the failed
    prompt's whole batch, and sent nothing after it); the rerun asks for that one prompt only."""
    prompts = questions(tmp_path, 40)
    with TeacherServer(refuse="Question 3:") as server:
        with pytest.raises(UserError, match=r"^1 of 40 requests were refused.*HTTP 400 \(.*too long.*not retried"):
            synth_stage.run(load_recipe(write_recipe(recipe_body(tmp_path, prompts, server.url, concurrency=8))))
    rows = shard_lines(tmp_path / "synth")
    assert len(rows) == 39 and not any("Question 3:" in r["messages"][-1]["content"] for r in rows)
    with TeacherServer() as fixed:
        out = synth_stage.run(load_recipe(write_recipe(recipe_body(tmp_path, prompts, fixed.url, concurrency=8))))
    assert len(fixed.prompts) == 1 and "Question 3:" in fixed.prompts[0]
    keys = [r["key"] for r in shard_lines(out)]
    assert len(keys) == len(set(keys)) == 40


def test_a_sigkill_with_hundreds_in_flight_loses_only_those(write_recipe, tmp_path, tiny_model):
    """The stage (a real process) sends 400 prompts, 256 in flight, to a server that answers each 0.5-2.5 s
    after the first 250 are all in (so that a loaded machine, slow to accept them, cannot answer the first
    before the last arrive); a real SIGKILL lands once the server holds 200 or more unanswered. The rerun
    sends only what is not on disk, at most what was in flight is asked twice, and the rows equal those
    of an uninterrupted run: the same keys, none twice, none missing."""
    prompts = questions(tmp_path, 400)
    delay = lambda prompt: 0.5 + (sum(map(ord, prompt)) % 100) / 50  # noqa: E731
    with TeacherServer(delay=delay) as server:
        server.hold = ("", lambda: server.most_in_flight >= 250, 60)  # every prompt
        recipe = write_recipe(recipe_body(tmp_path, prompts, server.url, concurrency=256, retry_budget_s=30))
        proc = subprocess.Popen(SMOLALIGN + ["synth-traces", "--recipe", str(recipe)], cwd=REPO,
                                env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        deadline = time.monotonic() + 300
        while not (server.answered >= 40 and server.in_flight >= 200):
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, f"never 200 in flight: {server.answered} answered, {server.in_flight}"
            time.sleep(0.01)
        in_flight = server.in_flight
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL and in_flight >= 200
        sent_before = settled(server)
        on_disk = shard_lines(tmp_path / "synth")
        assert 0 < len(on_disk) < 400 and len({r["key"] for r in on_disk}) == len(on_disk)

        resumed = synth_stage.run(load_recipe(recipe))
        asked_again = len(server.prompts) - sent_before
        assert asked_again == 400 - len(on_disk), "the rerun sends only what is not on disk"
        assert sent_before + asked_again - 400 <= 256, "only what was in flight is asked twice"

        reference = synth_stage.run(load_recipe(write_recipe(
            recipe_body(tmp_path, prompts, server.url, out="reference", concurrency=256), "reference.yaml")))
    keys = [r["key"] for r in shard_lines(resumed)]
    assert len(keys) == len(set(keys)) == 400
    assert sorted(keys) == sorted(r["key"] for r in shard_lines(reference))
    assert jsonl(resumed / "rows.jsonl") == jsonl(reference / "rows.jsonl")


def settled(server: TeacherServer) -> int:
    """The requests the server received, once no more arrive: connections the killed client opened may still
    be waiting in the server's accept queue."""
    count = -1
    while count != len(server.prompts):
        count = len(server.prompts)
        time.sleep(1)
    return count


def test_concurrency_by_default_is_what_the_server_can_take(tiny_model, capsys):
    """Unset, `concurrency` is 1024 per engine the vLLM server lists in its metrics (data parallel
    ranks), or 256 where it lists none, saying how to set it."""
    from pipeline.generation import OpenAIBackend

    metrics = "".join(f'vllm:cache_config_info{{block_size="16",engine="{e}",num_gpu_blocks="9000"}} 1.0\n'
                      for e in range(2))
    metrics = "# HELP vllm:cache_config_info Information\n" + metrics + 'vllm:num_requests_running{engine="0"} 3\n'
    with TeacherServer(metrics=metrics) as server:
        assert OpenAIBackend(tiny_model, server.url).concurrency == 2048
        assert OpenAIBackend(tiny_model, server.url, concurrency=5).concurrency == 5
    assert "2048 requests in flight (2 engine(s) serve" in capsys.readouterr().out
    with TeacherServer() as server:
        assert OpenAIBackend(tiny_model, server.url).concurrency == 256
    said = capsys.readouterr().out
    assert f"{server.url.removesuffix('/v1')}/metrics does not say how many engines" in said
    assert "Set backend.concurrency" in said


def test_requests_in_flight_fit_the_open_file_limit():
    """Each request in flight holds a socket: the soft limit is raised to fit them, up to the hard limit;
    past it, fewer are sent, and the process says so."""
    script = ("import resource; resource.setrlimit(resource.RLIMIT_NOFILE, (300, {hard}));"
              "from pipeline.generation import fit_open_files; print(fit_open_files(2048));"
              "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])")
    low = subprocess.run([sys.executable, "-c", script.format(hard=400)], capture_output=True, text=True, check=True)
    assert low.stdout.split()[-2:] == ["144", "400"]
    assert "room for 144 requests in flight, not 2048" in low.stdout
    high = subprocess.run([sys.executable, "-c", script.format(hard=4096)], capture_output=True, text=True, check=True)
    assert high.stdout.split() == ["2048", str(2048 + 256)]


def test_progress_is_in_the_bar_and_the_summary(write_recipe, tmp_path, monkeypatch, capfd):
    """prompts/s, generated tokens/s, ETA and the share cut at max_new_tokens, in the bar, the closing line
    and summary.json's `generation` (this run per model, and over everything stored)."""
    from pipeline.generation import Backend, Completion

    class Teacher(Backend):
        def generate(self, requests, sampling, desc=""):
            out = []
            for r in requests:
                cut = r.messages[-1]["content"].startswith(("Question 1:", "Question 2:"))
                text = "A long answer cut short" if cut else "<think>\nok\n</think>\n\nAnswer."
                out.append(Completion(text, "length" if cut else "stop", 10, 7 if cut else 3))
            return out

    monkeypatch.setattr(synth_stage, "make_backend", lambda *a, **k: Teacher())
    body = recipe_body(tmp_path, questions(tmp_path, 8), "http://unused/v1")
    body["backend"] = {"kind": "transformers"}
    out = synth_stage.run(load_recipe(write_recipe(body)))
    printed = capfd.readouterr()
    generation = read_summary(out)["generation"]
    teacher = generation["this_run"]["teacher"]
    assert teacher["model"] == "embedded:tiny-smollm3" and teacher["prompts"] == 8
    assert teacher["completion_tokens"] == 2 * 7 + 6 * 3 and teacher["cut"] == 2 and teacher["cut_share"] == 0.25
    assert teacher["max_new_tokens"] == 4096 and teacher["prompts_per_s"] > 0 and teacher["tokens_per_s"] > 0
    assert generation["stored"] == {"generations": 8, "cut": 2, "cut_share": 0.25}
    assert "8/8" in printed.err and "prompt/s" in printed.err  # the bar: done, rate and ETA
    assert "tok/s, cut at max_new_tokens 25.0%" in printed.err
    assert "synth-traces teacher: 8 prompts in" in printed.out and "25.0% cut at max_new_tokens (4096)" in printed.out


def test_the_store_writes_each_row_at_once_and_fsyncs_in_groups(tmp_path, monkeypatch):
    """A row is in the file (for a reader, and after a kill of the writer) as soon as it is added; fsync, the
    costly part, comes every `sync_rows` rows or `sync_seconds` seconds, and on close."""
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    path = tmp_path / "shard.jsonl"
    with ShardStore(path, sync_rows=4, sync_seconds=3600) as store:
        for i in range(10):
            store.add({"key": f"k{i}", "text": "x"})
            assert len(path.read_text().splitlines()) == i + 1
        store.add({"key": "k3", "text": "again"})  # stored once
        assert len(synced) == 2
    assert len(synced) == 3 and [json.loads(line)["key"] for line in path.read_text().splitlines()] == [
        f"k{i}" for i in range(10)]
    with ShardStore(path, sync_rows=1000, sync_seconds=0) as store:
        store.add({"key": "late", "text": "y"})
        assert len(synced) == 4  # the group is old enough
