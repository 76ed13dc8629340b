"""The stages, one line each: the module that runs a stage and the recipe schema it reads.

    smolalign STAGE --recipe FILE   ->   STAGES[STAGE]: load the schema, check, run the module

This table is the only place the foundation names a stage. It names them as module paths that are
imported when that stage is asked for, so pipeline/ imports nothing from synth/, merge/ or eval/
(tests/test_layout.py) and never branches on a recipe's type: what a recipe reads is its own
`inputs()`, what it gets wrong beyond its schema its own `problems()`.

A stage module has `run(recipe, overwrite=False) -> Path` (the synth stages also take `shard`) and
may have `check(recipe) -> [(key, problem)]` for what only it can judge (eval task names). Its
recipe class subclasses pipeline.schema.RecipeBase (a training stage: TrainRecipe) and lives beside
it. Adding a stage: its module, its recipe class, and one line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Stage:
    module: str  # dotted path of the module with `run`
    schema: str  # "module:Class" of its recipe


# In pipeline order: `smolalign demo` runs them in this order.
STAGES: dict[str, Stage] = {
    "midtrain": Stage("pipeline.midtrain", "pipeline.schema:TrainRecipe"),
    "synth-traces": Stage("synth.stage", "synth.schema:SynthRecipe"),
    "synth-pairs": Stage("synth.stage", "synth.schema:SynthRecipe"),
    "sft": Stage("pipeline.sft", "pipeline.schema:TrainRecipe"),
    "apo": Stage("pipeline.apo", "pipeline.schema:APORecipe"),
    "merge": Stage("merge.stage", "merge.schema:MergeRecipe"),
    "eval": Stage("eval.stage", "eval.schema:EvalRecipe"),
}


def recipe_class(stage: str) -> type:
    """The pydantic class of a stage's recipe."""
    module, name = STAGES[stage].schema.split(":")
    return getattr(importlib.import_module(module), name)


def stage_module(stage: str):
    """The module that runs a stage."""
    return importlib.import_module(STAGES[stage].module)
