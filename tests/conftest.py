"""Shared fixtures: the embedded models (built once into the user cache), recipe writing, and the CLI called
in this process."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from pipeline.models import resolve_model

    return resolve_model("embedded:tiny-smollm3")


@pytest.fixture(scope="session")
def smollm2() -> str:
    from pipeline.models import resolve_model

    return resolve_model("embedded:smollm2-135m-instruct")


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
