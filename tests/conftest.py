"""Shared fixtures: the embedded models (built once into the user cache), recipe writing, and the CLI called
in this process."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent

# Under `pytest -n N` (make test) each worker gets its share of the cores, set before torch is imported (it
# reads this once) and inherited by the processes tests start. Threads beyond the cores wait on each other at
# every parallel op: the eval stage test took 259 s with torch's default 2 threads and 37 s with 1 thread,
# measured one after the other on this 2-core machine while other jobs loaded it.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from pipeline.core.models import resolve_model

    return resolve_model("embedded:tiny-smollm3")


@pytest.fixture(scope="session")
def smollm2() -> str:
    from pipeline.core.models import resolve_model

    return resolve_model("embedded:smollm2-135m-instruct")


# A 4-step mid-training run of the tiny model, checkpoints at steps 2 and 4: the runs that resume after a crash
# or a kill are compared with one uninterrupted run of it (tests/test_stages.py, tests/test_kills.py)
MIDTRAIN_TRAINING = {"max_steps": 4, "save_strategy": "steps", "save_steps": 2, "save_total_limit": 2,
                     "learning_rate": 1.0e-3, "per_device_train_batch_size": 2, "bf16": False, "logging_steps": 1,
                     "max_length": 128, "packing": True, "packing_strategy": "wrapped"}


def midtrain_recipe(root: Path) -> Path:
    """That run's recipe, writing to root/runs/midtrain."""
    body = {"name": "t", "stage": "midtrain", "output_dir": str(root / "runs" / "midtrain"),
            "model": {"name_or_path": "embedded:tiny-smollm3", "dtype": "float32"},
            "data": {"sources": [{"path": str(REPO / "data/demo/reasoning.jsonl"), "mode": "think"}]},
            "training": MIDTRAIN_TRAINING}
    (root / "recipe.yaml").write_text(yaml.safe_dump(body, sort_keys=False))
    return root / "recipe.yaml"


@pytest.fixture(scope="session")
def uninterrupted_midtrain(tmp_path_factory, tiny_model) -> Path:
    """The finished uninterrupted run, trained once per test session (read it, never write to it)."""
    from pipeline.core.recipe import load_recipe
    from pipeline.training import sft

    return Path(once_per_session(tmp_path_factory, "uninterrupted-midtrain",
                                 lambda root: str(sft.run(load_recipe(midtrain_recipe(root))))))


def once_per_session(tmp_path_factory, name: str, build):
    """`build(directory)` once per test session, whichever process asks first, and what it returned (JSON) to
    every caller. Under `pytest -n` each worker has its own session fixtures: the first worker builds into the
    session's shared temp directory while holding a lock, the others wait and read its result. (Grouping the
    tests on one worker with xdist_group does not work with pytest 9.2: pytest-xdist issue 1386.)"""
    import fcntl
    import json

    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # this session's directory, above the workers' own
    result = root / f"{name}.json"
    with open(root / f"{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or when a killed holder dies
        if not result.is_file():
            where = root / name
            where.mkdir(exist_ok=True)
            value = build(where)
            result.write_text(json.dumps(value))
    return json.loads(result.read_text())


@pytest.fixture
def write_recipe(tmp_path):
    """Write a recipe dict (or raw YAML text) to a file and return its path."""

    def write(content, name="recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
        return path

    return write


def sft_recipe(**changes) -> dict:
    """A valid minimal SFT recipe; `changes` replace top-level keys."""
    recipe = {
        "name": "t",
        "stage": "sft",
        "model": {"name_or_path": "embedded:tiny-smollm3", "dtype": "float32"},
        "data": {"sources": [{"path": "data.jsonl", "mode": "no_think"}]},
        "training": {"max_steps": 1, "packing": True, "packing_strategy": "bfd", "max_length": 2048, "bf16": False},
    }
    recipe.update(changes)
    return recipe


def run_cli(monkeypatch, capfd, *args):
    """The CLI's main() in this process (faster than a subprocess when TRL is imported already), as
    (returncode, stdout, stderr) like subprocess.run. A test starts a real process only when the process
    boundary is what it tests (exit on a signal, a kill, what a fresh interpreter imports)."""
    from pipeline.cli import main

    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # main() installs its own: put pytest's back after
    capfd.readouterr()
    code = main([str(a) for a in args])
    captured = capfd.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)
