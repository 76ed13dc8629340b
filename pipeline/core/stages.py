"""The stages, one line each: the module that runs a stage and the recipe schema it reads.

    smolalign STAGE --recipe FILE   ->   STAGES[STAGE]: load the schema, check, run the module

This table is the only place the foundation names a stage. It names them as module paths that are
imported when that stage is asked for, so pipeline/ imports nothing from synth/, merge/ or eval/
(tests/test_layout.py) and never branches on a recipe's type: what a recipe reads is its own
`inputs()`, what it gets wrong beyond its schema its own `problems()`.

A stage module has `run(recipe, overwrite=False) -> Path` (a stage that `shards` also takes `shard`), may
have `check(recipe) -> [(key, problem)]` for what only it can judge (eval task names) and
`prepare(recipe, shard)` when its data can be built ahead of the job (`smolalign prepare`). What it shows
of itself it says too, so that no shared module names it:
- `plan(recipe, planner) -> PlanSection` and `plan_text(data) -> [lines]`: its part of `smolalign plan`
  (pipeline/planning/plan.py lends the `planner`: resolved TRL settings, the recipe's tokenizer offline,
  the published sources' sizes, the generation throughput given);
- `SUMMARY_SECTIONS`: the `Section`s (pipeline/core/summary.py) it writes in summary.json, with how the
  eval report shows each.
Its recipe class subclasses pipeline.core.schema.RecipeBase (a training stage: TrainRecipe, with
`trl_config` and `trains_on`) and lives beside it. Adding a stage: its module, its recipe class, and one
line here.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Stage:
    module: str  # dotted path of the module with `run`
    schema: str  # "module:Class" of its recipe
    shards: bool = False  # `--shard I/N` splits its work over machines (the generation stages; `smolalign synth`)


# In pipeline order: `smolalign demo` runs them in this order.
STAGES: dict[str, Stage] = {
    "midtrain": Stage("pipeline.training.midtrain", "pipeline.training.midtrain:MidtrainRecipe"),
    "synth-traces": Stage("synth.stage", "synth.schema:SynthRecipe", shards=True),
    "synth-pairs": Stage("synth.stage", "synth.schema:SynthRecipe", shards=True),
    "sft": Stage("pipeline.training.sft", "pipeline.training.sft:SFTRecipe"),
    "apo": Stage("pipeline.training.apo", "pipeline.training.apo:APORecipe"),
    "rl": Stage("rl.stage", "rl.schema:RLRecipe"),
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


@dataclass
class PlanSection:
    """A stage's own part of `smolalign plan`, from its module's `plan(recipe, planner)`.

    `data` is plan.json's `data` (what the recipe trains on or generates), printed by the module's
    `plan_text(data)`; `problems` stop the recipe from running as written. A training stage also says
    what an epoch holds, which the shared cost model (pipeline/planning/plan.py, costs.py) turns into
    steps, GPU-hours and memory without knowing the stage:
    """

    data: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    # rows_per_epoch, tokens_per_epoch (trained), span (mean tokens attention runs over), work_from (where the
    # figures come from); shown in the plan's cost as they are. Without rows, no step count.
    work: dict[str, Any] = field(default_factory=dict)
    sequences_per_row: int = 1  # sequences one row puts through the model at once (a preference pair: 2)
    reference_forward: float = 0.0  # extra compute a trained token costs for a frozen reference model (1/3)
    reference_copy: bool = False  # a frozen copy of the weights sits beside them on each GPU
    # A prompts-only stage (`trains_on: prompts`) generates what it trains on: tokens it generates an epoch.
    generated_tokens_per_epoch: float | None = None
    max_length: int | None = None  # tokens of its longest row, where `training.max_length` does not say it
    # Share of each GPU's memory held beside training by an engine the stage runs on the same GPUs (a generation
    # engine colocated with the trainer), with what it is, for the memory line: (share, label).
    reserved: tuple[float, str] | None = None
