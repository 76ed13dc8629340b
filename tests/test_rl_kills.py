"""The rl stage resumes exactly after a real SIGKILL (issue 34): killed while it generates a step's completions
and while it updates the weights, each rerun of the same command ends with the weights, bit for bit, of a run
never killed. tests/kill_harness.py holds the process at the moment; the kill is a real one.

The prompts ask for answers of fewer than 6 words (an IFEval instruction): of the tiny random model's 8 sampled
tokens, some make fewer words than others, so the rewards of a prompt's completions differ and the steps after the
checkpoint move the weights (checked: a resume that replayed nothing would match a run whose steps did nothing)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from conftest import REPO
from safetensors.torch import load_file

from eval.tasks import IFEvalTask

HARNESS = [sys.executable, str(REPO / "tests" / "kill_harness.py")]
SMOLALIGN = [sys.executable, "-m", "pipeline.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
QUESTIONS = ["Say hello to a friend.", "Name a fruit.", "Describe the sky.", "Give a tip for sleeping well.",
             "Name a colour.", "Say something kind."]
SHORT = "Answer in fewer than 6 words."


def short_answer_rows(path: Path) -> Path:
    """IFEval training rows (Task.training_rows) of everyday questions with a word-count instruction."""
    source = path.with_name("ifeval_columns.jsonl")
    source.write_text("".join(json.dumps({"key": i, "prompt": f"{q} {SHORT}",
                                          "instruction_id_list": ["length_constraints:number_words"],
                                          "kwargs": [{"num_words": 6, "relation": "less than"}]})
                              + "\n" for i, q in enumerate(QUESTIONS)))
    rows = IFEvalTask(source=str(source)).training_rows(mode="no_think")
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rl_recipe(root: Path, model: str) -> Path:
    prompts = short_answer_rows(root / "prompts.jsonl")
    body = {"name": "t", "stage": "rl", "output_dir": str(root / "runs" / "rl"),
            "model": {"name_or_path": model, "dtype": "float32"},
            "data": {"sources": [{"path": str(prompts), "mode": "from_row"}]},
            "prompt_modes": "both", "rewards": {"task": 1.0, "format": 0.5}, "rollouts_every": 1,
            "training": {"num_generations": 4, "max_completion_length": 8, "per_device_train_batch_size": 8,
                         "max_steps": 4, "learning_rate": 3.0e-3, "bf16": False, "logging_steps": 1,
                         "save_strategy": "steps", "save_steps": 2, "activation_checkpointing": False,
                         "report_to": "none"}}
    (root / "recipe.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return root / "recipe.yaml"


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "model.safetensors")


pytestmark = pytest.mark.e2e  # each test runs the stage several times in processes of its own (minutes)


@pytest.fixture(scope="module")
def straight(tmp_path_factory, tiny_model) -> Path:
    """The run never killed, in a process of its own (the same threads as the killed runs: bit-equal weights need
    the same order of float operations)."""
    root = tmp_path_factory.mktemp("straight")
    done = subprocess.run(SMOLALIGN + ["rl", "--recipe", str(rl_recipe(root, tiny_model))], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return root / "runs" / "rl"


def rollouts(run: Path, step: int) -> list[dict]:
    """A step's completions and rewards (without the source's path, which differs between the runs' folders)."""
    lines = (run / "rollouts" / f"step-{step:06d}.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "source"} for line in lines]


def killed_then_resumed(root: Path, model: str, moment: str) -> tuple[Path, subprocess.CompletedProcess]:
    recipe, markers = rl_recipe(root, model), root / "markers"
    markers.mkdir()
    proc = subprocess.Popen(HARNESS + [moment, str(markers), "rl", "--recipe", str(recipe)], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 600
        while not any(markers.iterdir()):
            if proc.poll() is not None:
                raise AssertionError(f"the stage ended (exit {proc.returncode}) before {moment}:\n"
                                     + proc.stdout.read()[-3000:])
            assert time.time() < deadline, f"the stage did not reach {moment}"
            time.sleep(0.1)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    partial = root / "runs" / "rl.partial"
    assert sorted(p.name for p in partial.glob("checkpoint-*")) == ["checkpoint-2"], "killed in step 3"
    rerun = subprocess.run(SMOLALIGN + ["rl", "--recipe", str(recipe)], cwd=REPO, env=ENV, capture_output=True,
                           text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from checkpoint-2 (step 2 of 4)" in rerun.stdout
    return root / "runs" / "rl", rerun


def test_the_uninterrupted_run_moves_the_weights(straight, tiny_model):
    """Every step has completions that earn different rewards, so the weights move: the resume tests below compare
    runs that trained, not runs that stood still."""
    start = load_file(Path(tiny_model) / "model.safetensors")
    end = weights(straight)
    assert any(not torch.equal(start[name], end[name]) for name in end)
    history = json.loads((straight / "log_history.json").read_text())
    moved = {h["step"]: h["grad_norm"] > 0 for h in history if "grad_norm" in h}
    assert moved[3] and moved[4], moved  # the steps a resume from checkpoint-2 redoes


@pytest.mark.parametrize("moment", ["rollout:3", "step:3"], ids=["during-generation", "during-the-update"])
def test_a_sigkill_resumes_to_the_weights_of_a_run_never_killed(straight, tmp_path, tiny_model, moment):
    resumed, rerun = killed_then_resumed(tmp_path, tiny_model, moment)
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)
    # the steps after the checkpoint were generated again, as the uninterrupted run generated them
    for step in (3, 4):
        assert rollouts(resumed, step) == rollouts(straight, step)
    manifest = json.loads((resumed / "manifest.json").read_text())
    assert [a["status"] for a in manifest["attempts"]] == ["killed", "complete"]
