"""The merge stage's recipe, beside the stage (merge/stage.py) that runs it; registered in
pipeline/core/stages.py.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from pipeline.core.schema import ChatSpec, RecipeBase, Strict
from pipeline.generation import BackendSpec, SamplingSpec


class MergeInput(Strict):
    path: str
    weight: float | None = Field(None, gt=0)


class MergeRecipe(RecipeBase):
    """Soup of APO checkpoints, then linear soup : long-context checkpoint (0.9 : 0.1)."""

    stage: Literal["merge"]
    soup: list[MergeInput] = Field(min_length=1)
    long_context: MergeInput
    soup_weight: float = Field(0.9, gt=0, lt=1, description="Final = w * soup + (1 - w) * long_context.")
    dtype: Literal["float32", "bfloat16", "float16"] = "bfloat16"
    chat: ChatSpec = ChatSpec()
    sweep: list[float] = Field(default_factory=list, description="Soup weights to merge and evaluate (0 < w <= 1).")
    sweep_tasks: dict[str, dict[str, Any]] = Field(
        default_factory=lambda: {"ruler": {"lengths": [4096, 16384, 65536], "n": 20}, "math": {"n": 100}},
        description="eval/ tasks scored at each sweep weight: long context and reasoning by default.")
    sweep_modes: list[Literal["think", "no_think"]] = Field(["think", "no_think"], min_length=1)
    backend: BackendSpec = BackendSpec()
    sampling: SamplingSpec = SamplingSpec()

    def inputs(self) -> list[tuple[str, str]]:
        return [(f"soup.{i}.path", m.path) for i, m in enumerate(self.soup)] + [("long_context.path",
                                                                                 self.long_context.path)]

    @model_validator(mode="after")
    def _sweep_weights(self):
        bad = [w for w in self.sweep if not 0 < w <= 1]
        if bad:
            raise ValueError(f"sweep weights must be in (0, 1]; got {bad}")
        return self
