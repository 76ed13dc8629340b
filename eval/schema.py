"""The eval stage's recipe, beside the stage (eval/stage.py) that runs it; registered in
pipeline/core/stages.py. The merge sweep builds one to score its merges (merge/sweep.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from pipeline.core.schema import ChatSpec, RecipeBase
from pipeline.generation import BackendSpec, SamplingSpec


class EvalRecipe(RecipeBase):
    stage: Literal["eval"]
    models: list[str] = Field(min_length=1, description="Checkpoints: run dirs, local dirs, Hub IDs, embedded:...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "bfloat16"
    tasks: dict[str, dict[str, Any]] = Field(min_length=1, description="task name -> options (n, lengths, ...)")
    modes: list[Literal["think", "no_think"]] = Field(["think", "no_think"], min_length=1)
    backend: BackendSpec = BackendSpec()
    sampling: SamplingSpec = SamplingSpec()
    chat: ChatSpec = ChatSpec()

    def inputs(self) -> list[tuple[str, str]]:
        return [(f"models.{i}", m) for i, m in enumerate(self.models)]
