"""The eval stage's recipe, beside the stage (eval/stage.py) that runs it; registered in
pipeline/core/stages.py. An evaluation itself (tasks, modes, backend, sampling, dtype, chat) is an
`EvalSpec`: the eval recipe is one plus the models it scores, and the merge sweep scores each merge with
one (merge/schema.py `sweep.eval`), so a field added here reaches both.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.core.schema import ChatSpec, RecipeBase, Strict
from pipeline.generation import BackendSpec, SamplingSpec, TransformersBackendSpec


class EvalSpec(Strict):
    """How checkpoints are scored: which tasks with which options, in which modes, generated how."""

    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "bfloat16"
    tasks: dict[str, dict[str, Any]] = Field(min_length=1, description="task name -> options (n, lengths, ...)")
    modes: list[Literal["think", "no_think"]] = Field(["think", "no_think"], min_length=1)
    backend: BackendSpec = TransformersBackendSpec()
    sampling: SamplingSpec = SamplingSpec()
    chat: ChatSpec = ChatSpec()


class EvalRecipe(RecipeBase, EvalSpec):
    """An evaluation (EvalSpec) of the models listed."""

    stage: Literal["eval"]
    models: list[str] = Field(min_length=1, description="Checkpoints: run dirs, local dirs, Hub IDs, embedded:...")

    def inputs(self) -> list[tuple[str, str]]:
        return [(f"models.{i}", m) for i, m in enumerate(self.models)]
