"""Preemption and damaged files (issue 32): real SIGTERM, SIGUSR1 and SIGINT sent to real stage processes at
named moments (tests/kill_harness.py), and weight files really cut short. Each test failed on the code before
(a4e56d2). Those that train several attempts to compare their weights are in the e2e tier."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import conftest
import pytest
import torch
import yaml
from conftest import REPO, sft_recipe
from safetensors.torch import load_file, save_file
from test_hostile import run_cli
from test_kills import ENV, HARNESS, SMOLALIGN, in_private_mount, wait_for_markers

from pipeline.core.runs import is_complete_checkpoint, read_manifest

PREEMPTED_EXIT = 75  # what scripts/slurm/ and the README promise (EX_TEMPFAIL): not taken from the code under test
INTERRUPTED_EXIT = 130


def midtrain_recipe(root: Path) -> Path:
    """conftest's mid-training run for 6 steps, saving every 2: a stop at step 3 or 5 falls between two saves."""
    return conftest.midtrain_recipe(root, max_steps=6)


def signalled(root: Path, moment: str, sig: signal.Signals, argv: list[str], hold_s: float = 0.0,
              env: dict | None = None) -> dict:
    """Run `smolalign ARGV` held at `moment`, wait `hold_s` there, send `sig` to its whole process group (what
    Ctrl-C in a terminal and Slurm's signal to a job step do), and return how it ended."""
    markers = root / "markers"
    markers.mkdir(parents=True)
    proc = subprocess.Popen(HARNESS + [moment, str(markers), *argv], cwd=REPO, env=env or ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_markers(markers, 1, proc)
        time.sleep(hold_s)
        os.killpg(proc.pid, sig)
        try:
            out, err = proc.communicate(timeout=300)
        except subprocess.TimeoutExpired:  # say where it waits: kill_harness dumps its threads' stacks on SIGQUIT
            os.kill(proc.pid, signal.SIGQUIT)
            time.sleep(2)
            os.killpg(proc.pid, signal.SIGKILL)
            out, err = proc.communicate(timeout=60)
            where = err[-8000:]
            raise AssertionError(f"still running 300 s after {sig.name}; where its threads were:\n{where}") from None
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    return {"code": proc.returncode, "stdout": out, "stderr": err}


def one_line(stderr: str, prefix: str) -> str:
    """The one line starting with `prefix` that a stopped command prints, and no traceback."""
    lines = [line.strip() for line in stderr.replace("\r", "\n").splitlines() if line.strip().startswith(prefix)]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def weights(path: Path) -> dict:
    return load_file(path / "model.safetensors")


def cut(path: Path, keep: float = 0.5) -> None:
    """Cut a file to `keep` of its length, as a kill or a full disk while writing it does."""
    with open(path, "r+b") as fh:
        fh.truncate(int(path.stat().st_size * keep))


# ---- SIGTERM / SIGUSR1 / Ctrl-C during training ---------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGTERM, pytest.param(signal.SIGUSR1, marks=pytest.mark.e2e)],
                         ids=["SIGTERM", "SIGUSR1"])
def test_a_stop_signal_in_a_step_saves_that_step_and_records_preempted(tmp_path, tiny_model, sig):
    """Before: the stage died 0.16 s after SIGTERM, saving nothing, its manifest `running`."""
    recipe = midtrain_recipe(tmp_path)
    t0 = time.time()
    ended = signalled(tmp_path, "step:3", sig, ["midtrain", "--recipe", str(recipe)], hold_s=2)
    assert ended["code"] == PREEMPTED_EXIT, ended["stderr"][-3000:]
    line = one_line(ended["stderr"], "preempted:")
    partial = tmp_path / "runs" / "midtrain.partial"
    assert f"stopped by {sig.name}; saved {partial / 'checkpoint-3'}" in line and "same command resumes" in line
    # step 3 finished and was saved whole, off the save schedule (every 2 steps): marked as such
    saved = partial / "checkpoint-3"
    assert is_complete_checkpoint(saved) and json.loads((saved / "trainer_state.json").read_text())["global_step"] == 3
    assert json.loads((saved / "preempted.json").read_text()) == {"signal": sig.name, "step": 3}
    assert is_complete_checkpoint(partial / "checkpoint-2") and not (partial / "checkpoint-4").exists()
    manifest = read_manifest(partial)
    attempt = manifest["attempts"][-1]
    assert manifest["status"] == attempt["status"] == "preempted"
    assert attempt["signal"] == sig.name and attempt["saved"] == "checkpoint-3"
    assert 2 <= attempt["duration_s"] <= time.time() - t0  # its real length, the 2 s held in step 3 included


def test_ctrl_c_in_a_step_is_one_line_and_recorded_interrupted(tmp_path, tiny_model):
    """Before: a KeyboardInterrupt traceback, and the attempt recorded `failed`."""
    recipe = midtrain_recipe(tmp_path)
    ended = signalled(tmp_path, "step:3", signal.SIGINT, ["midtrain", "--recipe", str(recipe)])
    assert ended["code"] == INTERRUPTED_EXIT, ended["stderr"][-3000:]
    assert "the same command resumes" in one_line(ended["stderr"], "interrupted (Ctrl-C)")
    manifest = read_manifest(tmp_path / "runs" / "midtrain.partial")
    assert manifest["status"] == manifest["attempts"][-1]["status"] == "interrupted"
    assert "error" not in manifest


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model):
    """The recipe run once without a stop, in a process of its own (the same threads as the stopped runs:
    bit-equal weights need the same order of float operations)."""
    root = tmp_path_factory.mktemp("straight")
    done = subprocess.run(SMOLALIGN + ["midtrain", "--recipe", str(midtrain_recipe(root))], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "runs" / "midtrain"


def rerun(recipe: Path) -> subprocess.CompletedProcess:
    return subprocess.run(SMOLALIGN + ["midtrain", "--recipe", str(recipe)], cwd=REPO, env=ENV, capture_output=True,
                          text=True, timeout=600)


def trained_steps(stdout: str) -> int:
    """Optimizer steps a training process logged (logging_steps: 1; transformers prints one dict a step)."""
    return stdout.count("{'loss'")


@pytest.mark.e2e
def test_a_preempted_run_resumes_bit_equal_to_an_uninterrupted_one_redoing_no_step(tmp_path, straight):
    recipe = midtrain_recipe(tmp_path)
    ended = signalled(tmp_path, "step:3", signal.SIGTERM, ["midtrain", "--recipe", str(recipe)])
    assert ended["code"] == PREEMPTED_EXIT, ended["stderr"][-3000:]
    again = rerun(recipe)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming from checkpoint-3 (step 3 of 6)" in again.stdout
    assert trained_steps(again.stdout) == 3  # steps 4, 5 and 6: step 3 is not redone
    out = tmp_path / "runs" / "midtrain"
    a, b = weights(straight), weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    # the finished run holds the checkpoints its recipe asked for, and no mark of the stop
    assert sorted(p.name for p in out.glob("checkpoint-*")) == sorted(p.name for p in straight.glob("checkpoint-*"))
    assert not list(out.rglob("preempted.json"))
    manifest = read_manifest(out)
    assert [a["status"] for a in manifest["attempts"]] == ["preempted", "complete"]
    history = [(h["step"], h["loss"]) for h in json.loads((out / "log_history.json").read_text()) if "loss" in h]
    assert history == [(h["step"], h["loss"]) for h in json.loads((straight / "log_history.json").read_text())
                       if "loss" in h]


@pytest.mark.e2e
def test_a_truncated_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(tmp_path, straight):
    """Before: the newest checkpoint, with a whole trainer_state.json, was trusted, and every rerun failed in
    restore with `SafetensorError: incomplete metadata, file not fully covered`."""
    recipe = midtrain_recipe(tmp_path)
    ended = signalled(tmp_path, "step:5", signal.SIGKILL, ["midtrain", "--recipe", str(recipe)])
    assert ended["code"] == -signal.SIGKILL
    partial = tmp_path / "runs" / "midtrain.partial"
    assert is_complete_checkpoint(partial / "checkpoint-4")
    cut(partial / "checkpoint-4" / "model.safetensors")
    again = rerun(recipe)
    assert again.returncode == 0, again.stderr[-3000:]
    aside = tmp_path / "runs" / "midtrain.incomplete" / "step-4"
    assert f"checkpoint-4 is incomplete ({partial / 'checkpoint-4' / 'model.safetensors'}: cut short" in again.stdout
    assert str(aside) in again.stdout and "resuming from checkpoint-2 (step 2 of 6)" in again.stdout
    a, b = weights(straight), weights(tmp_path / "runs" / "midtrain")
    assert all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.e2e
def test_every_rank_stops_after_the_same_step_when_one_rank_is_sent_sigterm(tmp_path, tiny_model):
    """Two gloo ranks under torchrun; SIGTERM reaches rank 1 only, while rank 0 goes on without a signal. Both
    stop after step 3 and save it together (a rank that stopped alone would leave the other one waiting in
    its next collective). Before: rank 1 died and torchrun took rank 0 down, nothing saved."""
    recipe = midtrain_recipe(tmp_path)
    markers = tmp_path / "markers"
    markers.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             str(free_port()), str(REPO / "tests" / "kill_harness.py"), "step:3", str(markers),
                             "midtrain", "--recipe", str(recipe)], cwd=REPO, env=ENV, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        wait_for_markers(markers, 2, proc)
        rank = {marker.read_text(): marker for marker in markers.iterdir()}
        os.kill(int(rank["1"].name), signal.SIGTERM)
        rank["0"].unlink()  # rank 0 leaves the moment without any signal
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    partial = tmp_path / "runs" / "midtrain.partial"
    said = [line for line in (out + err).splitlines() if line.startswith("preempted:")]
    assert len(said) == 2 and all(f"stopped by SIGTERM; saved {partial / 'checkpoint-3'}" in s for s in said), err
    assert is_complete_checkpoint(partial / "checkpoint-3") and not (partial / "checkpoint-4").exists()
    attempt = read_manifest(partial)["attempts"][-1]  # written by rank 0, which was not sent the signal itself
    assert (attempt["status"], attempt["signal"], attempt["saved"]) == ("preempted", "SIGTERM", "checkpoint-3")


def free_port() -> int:
    """A port no other job on this machine listens on now (a fixed one collides with tests run beside these)."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ---- weights cut short ------------------------------------------------------------------------------
def test_the_whole_file_check_agrees_with_the_safetensors_loader(tmp_path):
    """The reference is the safetensors library itself: a file it refuses to load is not whole, one it loads
    is; our check reads only the header."""
    from pipeline.core.weights import safetensors_problem

    whole = tmp_path / "whole.safetensors"
    save_file({"a": torch.arange(1000, dtype=torch.float32), "b": torch.ones(3, 7)}, whole, metadata={"k": "v"})
    data = whole.read_bytes()
    damaged = {"one byte short": data[:-1], "half": data[: len(data) // 2], "a byte too many": data + b"\0",
               "header only": data[: 8 + int.from_bytes(data[:8], "little")], "four bytes": data[:4],
               "header length garbage": b"\xff" * 8 + data[8:], "header cut": data[:20]}
    assert safetensors_problem(whole) is None and load_file(whole).keys() == {"a", "b"}
    for what, content in damaged.items():
        path = tmp_path / f"{what}.safetensors"
        path.write_bytes(content)
        with pytest.raises(Exception):  # noqa: B017  (safetensors raises its own error type)
            load_file(path)
        assert safetensors_problem(path) is not None, what
    empty = tmp_path / "empty.safetensors"
    save_file({}, empty)
    assert safetensors_problem(empty) is None and load_file(empty) == {}


@pytest.mark.parametrize("damaged", ["model.safetensors", "optimizer.pt"])
def test_a_checkpoint_with_a_file_cut_short_is_set_aside_and_the_one_before_resumed(tmp_path, damaged):
    from pipeline.training.train import complete_checkpoints

    run = tmp_path / "sft.partial"
    for step in (2, 4):
        ckpt = run / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        save_file({"w": torch.full((256,), float(step))}, ckpt / "model.safetensors")
        torch.save({"state": {0: {"exp_avg": torch.zeros(256)}}}, ckpt / "optimizer.pt")
        (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step, "max_steps": 6}))
    cut(run / "checkpoint-4" / damaged)
    assert complete_checkpoints(run) == [run / "checkpoint-2"]
    assert (tmp_path / "sft.incomplete" / "step-4" / damaged).is_file() and not (run / "checkpoint-4").exists()


@pytest.fixture
def damaged_run(tmp_path, tiny_model):
    """A finished midtrain run (manifest: complete) whose model.safetensors was cut short afterwards."""
    run = tmp_path / "runs" / "t" / "midtrain"
    shutil.copytree(tiny_model, run)
    (run / "manifest.json").write_text(json.dumps({"stage": "midtrain", "status": "complete",
                                                   "recipe_sha256": "0" * 64}))
    cut(run / "model.safetensors")
    return run


def stage_recipe(stage: str, tmp_path: Path, damaged: Path, whole: str) -> dict:
    out = {"name": "t", "output_dir": str(tmp_path / "runs" / "t" / stage)}
    if stage == "sft":
        chat = str(REPO / "data/demo/chat_no_think.jsonl")
        return sft_recipe(**out, model={"name_or_path": str(damaged), "dtype": "float32"},
                          data={"sources": [{"path": chat, "mode": "no_think"}]})
    if stage == "apo":
        return {**out, "stage": "apo", "model": {"name_or_path": str(damaged), "dtype": "float32"},
                "data": {"sources": [{"path": str(REPO / "data/demo/preferences.jsonl"), "mode": "from_row"}]},
                "training": {"loss_type": "apo_zero", "max_steps": 1, "bf16": False, "max_length": 256}}
    if stage == "eval":
        return {**out, "stage": "eval", "models": [whole, str(damaged)], "tasks": {"mode": {"n": 1}},
                "modes": ["no_think"], "backend": {"kind": "transformers"}, "sampling": {"max_new_tokens": 2}}
    return {**out, "stage": "merge", "soup": [{"path": whole}, {"path": str(damaged)}],
            "long_context": {"path": whole}, "soup_weight": 0.9, "dtype": "float32"}


@pytest.mark.parametrize("stage", ["sft", "apo", "eval", "merge"])
def test_a_run_with_weights_cut_short_as_an_input_is_one_line_naming_the_file(write_recipe, tmp_path, monkeypatch,
                                                                               capfd, damaged_run, tiny_model, stage):
    """Before: apo and sft failed with a SafetensorError traceback once the model loaded (after the data was
    built); merge already refused it in one line, with its own check (now the same one)."""
    recipe = write_recipe(stage_recipe(stage, tmp_path, damaged_run, tiny_model))
    ended = run_cli(monkeypatch, capfd, stage, "--recipe", str(recipe))
    assert ended.returncode == 2, ended.stderr[-3000:]
    line = one_line(ended.stderr, "error:")
    assert f"{damaged_run / 'model.safetensors'}: cut short" in line and "rerun the stage that wrote" in line
    assert not (tmp_path / "runs" / "t" / f"{stage}.partial").exists()  # refused before anything started


def test_a_run_whose_weights_are_cut_short_is_not_promoted(write_recipe, tmp_path):
    from pipeline.core.errors import UserError
    from pipeline.core.recipe import load_recipe
    from pipeline.core.runs import stage_run

    recipe = load_recipe(write_recipe(sft_recipe(output_dir=str(tmp_path / "runs" / "sft"))))
    with pytest.raises(UserError, match="model.safetensors: cut short") as e:
        with stage_run(recipe) as run:
            save_file({"w": torch.zeros(4096)}, run.path / "model.safetensors")
            cut(run.path / "model.safetensors")  # a filesystem that lost the end of the file
    assert not recipe.output_path().exists()
    manifest = read_manifest(run.path)
    assert manifest["status"] == "failed" and str(run.path / "model.safetensors") in manifest["error"]
    assert "rerun the same command" in str(e.value)


# ---- a killed attempt's duration ----------------------------------------------------------------------
def test_a_killed_attempts_duration_comes_from_the_heartbeat(write_recipe, tmp_path):
    """An attempt SIGKILLed 12 s after it started, having written no file since its first second. Before: its
    duration was taken from the newest file's time (a 40-second attempt recorded as 1.088 s)."""
    from pipeline.core.runs import record_killed_attempts

    recipe = write_recipe(sft_recipe(output_dir=str(tmp_path / "runs" / "sft")))
    holder = subprocess.Popen([sys.executable, "-c", f"""
import time
from pipeline.core.recipe import load_recipe
from pipeline.core.runs import stage_run
with stage_run(load_recipe({str(recipe)!r})):
    print("open", flush=True)
    time.sleep(600)
"""], cwd=REPO, env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        opened = time.time()
        time.sleep(12)
    finally:
        holder.kill()
        holder.wait()
    lived = time.time() - opened
    partial = tmp_path / "runs" / "sft.partial"
    attempts = read_manifest(partial)["attempts"]
    record_killed_attempts(attempts, partial)  # what the next attempt does first
    assert attempts[-1]["status"] == "killed"
    # within the 5 s between two heartbeats (README), and 1.5 s for started_at's whole seconds and scheduling
    assert lived - 5 - 1.5 <= attempts[-1]["duration_s"] <= lived + 2


# ---- the other stages: SIGTERM and Ctrl-C -------------------------------------------------------------
def other_stage(stage: str, root: Path, tiny_model: str) -> tuple[str, list[str]]:
    """(harness moment, command line) of a small run of `stage` that stops there in its middle."""
    out = {"name": "t", "output_dir": str(root / "runs" / stage)}
    if stage == "prepare":
        rows = [{"messages": [{"role": "user", "content": f"question {i}"},
                              {"role": "assistant", "content": f"answer {i}"}]} for i in range(600)]
        (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        body = sft_recipe(**out, data={"sources": [{"path": str(root / "rows.jsonl"), "mode": "no_think"}],
                                       "num_proc": 2})
        moment = "map-worker"
    elif stage == "synth-traces":
        body = {**out, "stage": stage, "teacher": {"name_or_path": tiny_model, "dtype": "float32"},
                "prompts": {"sources": [{"path": str(REPO / "data/demo/prompts.jsonl")}]}, "max_prompts": 4,
                "sampling": {"temperature": 0.0, "max_new_tokens": 4}, "filters": {"decontaminate": False}}
        moment = "generate:1"
    elif stage == "eval":
        body = {**out, "stage": stage, "models": [tiny_model], "tasks": {"mode": {"n": 2}}, "dtype": "float32",
                "modes": ["no_think", "think"], "backend": {"kind": "transformers"},
                "sampling": {"temperature": 0.0, "max_new_tokens": 4}}
        moment = "generate:2"  # the first (task, mode) is stored
    else:
        body = {**out, "stage": stage, "soup": [{"path": tiny_model}, {"path": tiny_model}],
                "long_context": {"path": tiny_model}, "soup_weight": 0.9, "dtype": "float32"}
        moment = "merge"
    (root / "recipe.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return moment, [stage, "--recipe", str(root / "recipe.yaml")]


def left_behind(*places: Path) -> list[str]:
    """Temp files, staging directories, lock files and empty files under `places`."""
    found = []
    for place in places:
        for path in place.rglob("*") if place.is_dir() else []:
            name = path.name
            if (".tmp" in name or name.startswith("tmp") or name.endswith((".lock", ".incomplete"))
                    or (path.is_file() and path.stat().st_size == 0)):
                found.append(str(path))
    return found


@pytest.mark.parametrize("stage, sig", [
    ("prepare", signal.SIGTERM),
    *[pytest.param(stage, sig, marks=pytest.mark.e2e)
      for stage, sig in [("prepare", signal.SIGINT), ("synth-traces", signal.SIGTERM), ("synth-traces", signal.SIGINT),
                         ("eval", signal.SIGTERM), ("eval", signal.SIGINT), ("merge", signal.SIGTERM),
                         ("merge", signal.SIGINT)]]], ids=lambda value: getattr(value, "name", value))
def test_sigterm_and_ctrl_c_stop_every_other_stage_in_one_line_leaving_nothing_half_written(tmp_path, tiny_model,
                                                                                          stage, sig):
    """Slurm signals every process of a job step, Ctrl-C the terminal's whole process group: here the group
    (with prepare's data workers). Before: SIGTERM ended the process with no word and no record; Ctrl-C
    printed KeyboardInterrupt tracebacks (one per data worker in prepare)."""
    moment, argv = other_stage(stage, tmp_path, tiny_model)
    env = {**ENV, "SMOLALIGN_CACHE": str(tmp_path / "cache")}
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "models").symlink_to(Path(tiny_model).parent)  # the embedded models, built once
    ended = signalled(tmp_path, moment, sig, argv, env=env)
    if sig == signal.SIGTERM:
        assert ended["code"] == PREEMPTED_EXIT, ended["stderr"][-3000:]
        assert "stopped by SIGTERM" in one_line(ended["stderr"], "preempted:")
    else:
        assert ended["code"] == INTERRUPTED_EXIT, ended["stderr"][-3000:]
        one_line(ended["stderr"], "interrupted (Ctrl-C)")
    assert left_behind(tmp_path / "cache" / "mixtures", tmp_path / "runs") == []
    if stage != "prepare":
        manifest = read_manifest(tmp_path / "runs" / f"{stage}.partial")
        assert manifest["status"] == ("preempted" if sig == signal.SIGTERM else "interrupted")
    if stage == "eval":  # what finished before the signal is kept, whole
        from eval.stage import slug

        kept = json.loads((tmp_path / "runs" / "eval.partial" / f"{slug(tiny_model)}.json").read_text())
        assert list(kept["tasks"]["mode"]) == ["no_think"]


FORKED_IN_THE_WINDOW = """
import os, signal, sys, time
ready_r, ready_w = os.pipe()

def another_librarys_hook():  # runs in the child before ours (registered first), as threading's and torch's do
    os.write(ready_w, b"x")
    time.sleep(2)

os.register_at_fork(after_in_child=another_librarys_hook)
from pipeline.core.preemption import handling_stop_signals

with handling_stop_signals():
    pid = os.fork()
    if pid == 0:  # a pool worker at work
        time.sleep(2)
        os._exit(0)
    os.read(ready_r, 1)
    os.kill(pid, int(sys.argv[1]))  # Pool.terminate() while the child is still in its at-fork hooks
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_a_stop_signal_sent_to_a_child_still_in_its_fork_hooks_ends_it(sig):
    """A datasets.map pool replaces a worker the job's SIGTERM killed just as the stopping parent terminates its
    workers. Before: a signal that reached the new child before our at-fork hook ran the parent's handler there
    (Preempted, swallowed as an at-fork hook's error), the child lived on, and the stage waited for it forever
    (test_sigterm_and_ctrl_c_stop_every_other_stage_in_one_line_leaving_nothing_half_written[prepare-SIGTERM]
    hung about 1 run in 3)."""
    proc = subprocess.run([sys.executable, "-c", FORKED_IN_THE_WINDOW, str(int(sig))], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split() == [str(-int(sig))], proc.stderr[-3000:]  # the child died of the signal
    assert "Traceback" not in proc.stderr


# ---- prepare on a full or read-only disk ---------------------------------------------------------------
@pytest.mark.e2e
@pytest.mark.parametrize("disk", ["full", "read-only"])
def test_prepare_on_a_full_or_read_only_disk_is_one_line_leaves_nothing_and_the_rerun_is_exact(
        tmp_path, tiny_model, monkeypatch, capfd, disk):
    """The mixture cache on a real tmpfs of 40 KiB (or mounted read-only). Before: 63 lines and 2 tracebacks
    (`OSError: [Errno 28]` inside `DatasetGenerationError`), exit 1, and a 0-byte quarantine.jsonl, a .tmp
    directory and lock files left in the cache."""
    cache, seen, mixtures = tmp_path / "cache", tmp_path / "seen", tmp_path / "cache" / "mixtures"
    for path in (mixtures, seen):
        path.mkdir(parents=True)
    (cache / "models").symlink_to(Path(tiny_model).parent)
    body = sft_recipe(output_dir=str(tmp_path / "runs" / "sft"),
                      data={"sources": [{"path": str(REPO / "data/demo/chat_no_think.jsonl"), "mode": "no_think"}],
                            "num_proc": 1})
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(body, sort_keys=False))
    prepare = f"SMOLALIGN_CACHE={cache} {sys.executable} -m pipeline.cli prepare --recipe {recipe}"
    options = "size=40k" if disk == "full" else "ro,size=1m"
    result = in_private_mount(f"""
mount -t tmpfs -o {options} tmpfs {mixtures} || exit 99
{prepare} 2> {seen}/stderr; echo $? > {seen}/exit
find {mixtures} -mindepth 1 > {seen}/listing
mount -o remount,rw,size=50m {mixtures}
{prepare} 2> {seen}/stderr2; echo $? > {seen}/exit2
find {mixtures} -mindepth 1 > {seen}/listing2
cp -r {mixtures}/. {seen}/built
""")
    assert result.returncode == 0, result.stderr[-2000:]
    assert (seen / "exit").read_text().strip() == "2", (seen / "stderr").read_text()[-3000:]
    line = one_line((seen / "stderr").read_text(), "error:")
    reason = "No space left on device" if disk == "full" else "Read-only file system"
    assert f"cannot write {mixtures}" in line and reason in line and "SMOLALIGN_CACHE" in line
    assert (seen / "listing").read_text().split() == []  # no temp, staging, lock or 0-byte file
    assert (seen / "exit2").read_text().strip() == "0", (seen / "stderr2").read_text()[-3000:]
    assert left_behind(seen / "built") == []
    # the rerun built what a build that never met a full disk builds
    reference = tmp_path / "reference"
    reference.mkdir()
    (reference / "models").symlink_to(Path(tiny_model).parent)
    monkeypatch.setenv("SMOLALIGN_CACHE", str(reference))
    clean = run_cli(monkeypatch, capfd, "prepare", "--recipe", str(recipe))
    assert clean.returncode == 0, clean.stderr[-3000:]
    built, expected = contents(seen / "built"), contents(reference / "mixtures")
    assert built.keys() == expected.keys() and built == expected


def contents(directory: Path) -> dict:
    """Every file's bytes; an Arrow file's table (datasets stamps a random fingerprint into its metadata)."""
    import pyarrow as pa

    def read(path: Path):
        if path.suffix != ".arrow":
            return path.read_bytes()
        with pa.memory_map(str(path)) as source:
            return pa.ipc.open_stream(source).read_all().to_pydict()

    return {p.relative_to(directory): read(p) for p in sorted(directory.rglob("*")) if p.is_file()}


# ---- the Slurm scripts' helper ------------------------------------------------------------------------
@pytest.mark.parametrize("sig, requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)], ids=["USR1", "TERM"])
def test_the_slurm_helper_passes_the_signal_on_and_requeues_only_ahead_of_the_time_limit(tmp_path, sig, requeued):
    """scripts/slurm/preemptible.sh in a real bash, signalled as `#SBATCH --signal=B:USR1@...` (or scancel)
    signals a batch shell. Slurm's `scontrol` does not exist here: a stand-in on PATH records its arguments.
    The command is a stand-in for smolalign that exits 75 on SIGTERM, as the stages do (tested above)."""
    bin_dir, seen = tmp_path / "bin", tmp_path / "seen"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" > {seen / "scontrol"}\n')
    (bin_dir / "scontrol").chmod(0o755)
    child = tmp_path / "child.py"
    child.write_text(f"""
import pathlib, signal, sys, time
def stop(signum, frame):
    pathlib.Path({str(seen / 'child')!r}).write_text(signal.Signals(signum).name)
    sys.exit(75)
signal.signal(signal.SIGTERM, stop)
pathlib.Path({str(seen / 'ready')!r}).write_text("")
time.sleep(60)
""")
    seen.mkdir()
    shell = subprocess.Popen(["bash", "-c", f"set -euo pipefail; source scripts/slurm/preemptible.sh; "
                                            f"preemptible {sys.executable} {child}"],
                             cwd=REPO, env={**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}",
                                            "SLURM_JOB_ID": "4242"}, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 30
    while not (seen / "ready").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(shell.pid, sig)
    _, err = shell.communicate(timeout=30)
    assert shell.returncode == 75 and (seen / "child").read_text() == "SIGTERM"
    if requeued:
        assert (seen / "scontrol").read_text().split() == ["requeue", "4242"] and "requeueing job 4242" in err
    else:
        assert not (seen / "scontrol").exists()


def test_a_lock_file_goes_with_its_lock_and_a_waiter_locks_the_file_that_is_there(tmp_path):
    """The holder removes the lock file as it releases it (no 0-byte lock stays in the cache); a process that
    was waiting on that file then holds a file nobody else can see: it must lock the one at the path
    instead, or a third process would lock that one at the same time."""
    import threading

    from pipeline.core.locks import LockBusy, exclusive

    lock = tmp_path / "m.lock"
    release, second_holds, third_tried = threading.Event(), threading.Event(), threading.Event()

    def first():
        with exclusive(lock, "the mixture", wait=False):
            release.wait(10)

    def second():
        with exclusive(lock, "the mixture", wait=True):
            second_holds.set()
            third_tried.wait(10)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    threads[0].start()
    time.sleep(0.3)
    threads[1].start()
    time.sleep(0.3)
    release.set()
    assert second_holds.wait(10)
    with pytest.raises(LockBusy):
        with exclusive(lock, "the mixture", wait=False):
            pass
    third_tried.set()
    for thread in threads:
        thread.join(10)
    assert not lock.exists()
