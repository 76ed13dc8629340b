"""The merge stage's recipe, beside the stage (merge/stage.py) that runs it; registered in
pipeline/core/stages.py. The sweep's evaluation is the eval stage's own spec (eval/schema.py EvalSpec),
composed rather than copied: a field the eval gains reaches the sweep with no edit here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from eval.schema import EvalSpec
from pipeline.core.schema import ChatSpec, RecipeBase, Strict

# What the sweep scores by default: long context (what the long-context checkpoint brings back) and reasoning.
DEFAULT_SWEEP_TASKS = {"ruler": {"lengths": [4096, 16384, 65536], "n": 20}, "math": {"n": 100}}
# Where the keys of the sweep's earlier layout went, for a recipe that still uses them.
OLD_SWEEP_KEYS = {"sweep_tasks": "sweep.eval.tasks", "sweep_modes": "sweep.eval.modes",
                  "backend": "sweep.eval.backend", "sampling": "sweep.eval.sampling"}


class MergeInput(Strict):
    path: str
    weight: float | None = Field(None, gt=0)


class SweepSpec(Strict):
    """Merge at each weight and score each merge with `eval` (merge/sweep.py)."""

    weights: list[float] = Field(min_length=1, description="Soup weights to merge and evaluate (0 < w <= 1).")
    eval: EvalSpec = Field(
        default_factory=lambda: EvalSpec(tasks=DEFAULT_SWEEP_TASKS),
        description="How each merge is scored: an eval recipe's settings without its models (tasks, modes, "
        "backend, sampling, dtype, chat; eval/schema.py EvalSpec). Default: RULER at 4k-64k and math, both modes.")

    @field_validator("weights")
    @classmethod
    def _weights_in_range(cls, weights: list[float]) -> list[float]:
        bad = [w for w in weights if not 0 < w <= 1]
        if bad:
            raise ValueError(f"sweep weights must be in (0, 1]; got {bad}")
        return weights


class MergeRecipe(RecipeBase):
    """Soup of APO checkpoints, then linear soup : long-context checkpoint (0.9 : 0.1)."""

    stage: Literal["merge"]
    soup: list[MergeInput] = Field(min_length=1)
    long_context: MergeInput
    soup_weight: float = Field(0.9, gt=0, lt=1, description="Final = w * soup + (1 - w) * long_context.")
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    chat: ChatSpec = ChatSpec()
    sweep: SweepSpec | None = Field(None, description="Merge at several soup weights and score each (merge/sweep.py).")

    def inputs(self) -> list[tuple[str, str]]:
        return [(f"soup.{i}.path", m.path) for i, m in enumerate(self.soup)] + [("long_context.path",
                                                                                 self.long_context.path)]

    @model_validator(mode="before")
    @classmethod
    def _old_sweep_layout(cls, data: Any) -> Any:
        """A recipe written for the sweep's earlier layout (weights as a list, its eval in top-level keys):
        say where each key went, rather than call them unknown."""
        if not isinstance(data, dict):
            return data
        moved = [f"`{old}` -> `{new}`" for old, new in OLD_SWEEP_KEYS.items() if old in data]
        if isinstance(data.get("sweep"), list):
            moved.insert(0, "`sweep: [weights]` -> `sweep.weights`")
        if moved:
            raise ValueError("the sweep is one block now, `sweep: {weights: [...], eval: {tasks, modes, backend, "
                             f"sampling, dtype, chat}}`: {', '.join(moved)} (see recipes/smollm3/merge.yaml)")
        return data
