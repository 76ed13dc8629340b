"""The demo moves the model: SFT on the demo recipe teaches the think format the base model lacks.

A shorter setting of the shipped demo SFT recipe (fewer steps, from the base model instead of the
mid-training output, without the synthetic source a fresh clone does not have yet) runs through the
real stage; the real eval stage then scores mode adherence of the base model and of the SFT output
on prompts the demo data never contains (eval/tasks/mode.py). The numbers are asserted, not only
that it ran. About 3 minutes on 2 free cores.
"""

import json

import pytest
import yaml
from conftest import REPO

from eval import stage as eval_stage
from pipeline.core.recipe import load_recipe
from pipeline.training import sft

BASE = "embedded:smollm2-135m-instruct"
STEPS = 40  # >= 20 logged steps: the loss check compares the mean of the first 10 with the last 10


def short_sft_recipe(write_recipe, out):
    recipe = yaml.safe_load((REPO / "recipes/demo/sft.yaml").read_text())
    recipe["data"]["sources"] = [{**s, "path": str(REPO / s["path"])} for s in recipe["data"]["sources"]
                                 if s["path"].startswith("data/")]
    recipe["model"]["name_or_path"] = BASE
    recipe["training"]["max_steps"] = STEPS
    recipe["output_dir"] = str(out)
    return load_recipe(write_recipe(recipe, "sft.yaml"))


@pytest.mark.slow
@pytest.mark.e2e
def test_demo_sft_teaches_think_mode(write_recipe, tmp_path, smollm2):
    sft_out = sft.run(short_sft_recipe(write_recipe, tmp_path / "sft"))
    losses = [h["loss"] for h in json.loads((sft_out / "log_history.json").read_text()) if "loss" in h]
    assert len(losses) == STEPS
    assert sum(losses[-10:]) / 10 < sum(losses[:10]) / 10, losses  # the loss curve falls

    demo_eval = yaml.safe_load((REPO / "recipes/demo/eval.yaml").read_text())
    demo_eval.update(models=[BASE, str(sft_out)], tasks={"mode": {"n": 8}}, output_dir=str(tmp_path / "eval"))
    out = eval_stage.run(load_recipe(write_recipe(demo_eval, "eval.yaml")))
    scores = json.loads((out / "manifest.json").read_text())["metrics"]["scores"]
    base, tuned = scores[BASE]["mode"], scores[str(sft_out)]["mode"]
    # the base model never opens a think block; after a few dozen demo steps the SFT model mostly does
    assert tuned["think"] > base["think"] and tuned["think"] >= 0.5, scores
    # ...and still answers directly in no-think mode
    assert tuned["no_think"] >= 0.75, scores
