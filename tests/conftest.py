"""Shared fixtures: the embedded models (built once into the user cache) and recipe writing."""

from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def tiny_model() -> str:
    from pipeline.core.models import resolve_model

    return resolve_model("embedded:tiny-smollm3")


@pytest.fixture(scope="session")
def smollm2() -> str:
    from pipeline.core.models import resolve_model

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
