"""The synth stages' recipe (synth-traces, synth-pairs) and their filter settings, beside the stage
(synth/stage.py) that runs them; registered in pipeline/core/stages.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from pipeline.core.schema import DataSpec, ModelSpec, RecipeBase, Strict
from pipeline.generation import BackendSpec, SamplingSpec, TransformersBackendSpec


class FilterSpec(Strict):
    """Filters of generated data (synth/filters.py); each dropped row is counted and kept with its reason."""

    drop_truncated: bool = Field(True, description="Drop generations that hit max_new_tokens.")
    require_think_block: bool = Field(True, description="Think mode needs one well-formed, non-empty think block.")
    dedup: Literal["none", "exact", "exact_and_near"] = Field(
        "exact_and_near", description="Exact (normalised prompt + answer) and near (MinHash LSH on answers).")
    near_threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity of answer 5-grams.")
    decontaminate: bool = Field(True, description="Drop prompts sharing an n-gram with our eval tasks' prompts.")
    decontaminate_against: list[str] = Field(
        default_factory=list, description="Eval recipes (YAML files, beside this recipe or from the working "
        "directory) whose prompts the data must not share an n-gram with: each of their tasks built with that "
        "recipe's own options, so from its real sources. Empty: every registered eval task with its default options "
        "(the sets shipped with the packages; all an offline run can read).")
    ngram: int = Field(13, ge=1, description="Words per n-gram for decontamination.")
    verify: str | None = Field(
        None, description="A registered eval task (eval/tasks): keep generations that earn its full reward against "
        "the prompt row's `reference` (or `answer`); a row without one passes, unless the task needs none (mode).")

    def eval_recipes(self, base_dir: Path) -> list[Path]:
        """The files `decontaminate_against` names: each beside the synth recipe (`base_dir`) where it is
        there, else as given (from the working directory)."""
        return [base_dir / path if (base_dir / path).is_file() else Path(path).expanduser()
                for path in self.decontaminate_against]


class SynthRecipe(RecipeBase):
    """synth-traces (teacher in thinking mode) / synth-pairs (strong = chosen, weak = rejected)."""

    stage: Literal["synth-traces", "synth-pairs"]
    teacher: ModelSpec
    weak: ModelSpec | None = Field(None, description="synth-pairs: the model whose answers are rejected.")
    backend: BackendSpec = TransformersBackendSpec()
    sampling: SamplingSpec = SamplingSpec()
    prompts: DataSpec
    modes: list[Literal["think", "no_think"]] = Field(["think", "no_think"], min_length=1)
    max_prompts: int | None = Field(None, gt=0)
    prefill_think: bool = Field(False, description="Think mode: start the assistant turn with `<think>\\n` for a "
                                "teacher whose template does not open one itself (the trace keeps it).")
    filters: FilterSpec = FilterSpec()

    def inputs(self) -> list[tuple[str, str]]:
        out = [("teacher.name_or_path", self.teacher.name_or_path)]
        if self.weak:
            out.append(("weak.name_or_path", self.weak.name_or_path))
        out += [(f"prompts.sources.{i}.path", s.path) for i, s in enumerate(self.prompts.sources)]
        base_dir = Path(self._source).parent if self._source else Path(".")
        return out + [(f"filters.decontaminate_against.{i}", str(path))
                      for i, path in enumerate(self.filters.eval_recipes(base_dir))]

    @model_validator(mode="after")
    def _weak_for_pairs(self):
        if self.stage == "synth-pairs" and self.weak is None:
            raise ValueError("synth-pairs needs `weak` (the model whose answers become `rejected`)")
        if self.weak is not None and self.weak.name_or_path == self.teacher.name_or_path:
            raise ValueError("`weak` and `teacher` are the same model: a pair would compare a model with itself")
        if self.stage == "synth-traces" and self.weak is not None:
            raise ValueError("synth-traces uses only `teacher`; remove `weak`")
        return self
