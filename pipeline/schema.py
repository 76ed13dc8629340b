"""Typed recipes: the shared specs (model, chat, data sources, LoRA), the base every stage's recipe
extends, and the base of the training stages' recipes; help text and cross-field rules in one place.

A recipe is YAML (`recipes/`), loaded and checked by pipeline/recipe.py. Every model here forbids
unknown keys, so a typo is an error with a suggestion rather than a silently ignored setting.
Every stage owns its recipe class, beside its stage module (pipeline/midtrain.py, sft.py, apo.py,
synth/schema.py, merge/schema.py, eval/schema.py; generation's backend and sampling specs in
pipeline/generation.py); the registry
pipeline/stages.py says which class reads which stage. A recipe says itself what it reads
(`inputs()`) and what it gets wrong beyond its schema (`problems()`), so the foundation branches on
no recipe type. The `training:` block is TRL's own (SFTConfig / DPOConfig) and is checked against
TRL in pipeline/checks.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from pipeline.chat import DEFAULT_CUTOFF, DEFAULT_DATE


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------
class ModelSpec(Strict):
    name_or_path: str = Field(
        description="Hub ID (org/name), local checkpoint dir, earlier stage output (runs/...), or "
        "`embedded:smollm2-135m-instruct` / `embedded:tiny-smollm3` (built locally, no Hub)."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "bfloat16"
    attn_implementation: Literal["auto", "eager", "sdpa", "flex_attention", "flash_attention_2",
                                 "flash_attention_3"] = Field(
        "auto", description="`auto`: flash_attention_2 where flash-attn imports, else flex_attention on a GPU, else "
        "sdpa (pipeline/train.py choose_attention); the choice and why are in the manifest and the first log line.")


class ChatSpec(Strict):
    template: str = Field(
        "smollm3",
        description="`smollm3` (our dual-mode template, installed on every checkpoint we write), "
        "`model` (the tokenizer's own), or a path to a .jinja file.",
    )
    today_date: str = Field(DEFAULT_DATE, description="Fixed date stamped in the system turn (reproducible data).")
    knowledge_cutoff: str = DEFAULT_CUTOFF


class Source(Strict):
    path: str = Field(description="Hub dataset ID or local .jsonl/.json/.parquet file.")
    name: str | None = Field(None, description="Hub dataset config (subset).")
    split: str = "train"
    mode: Literal["think", "no_think", "from_row"] = Field(
        "from_row", description="Reasoning mode of the rows; `from_row` reads chat_template_kwargs."
    )
    fraction: float | None = Field(None, gt=0, description="Share of rows to take; >1 upsamples.")
    tokens: int | None = Field(None, gt=0, description="Token budget; rows are up/down-sampled to it.")
    allow_empty: bool = Field(False, description="Accept a source with no usable row (reported as 0 rows) "
                              "instead of stopping: for the output of an earlier stage that may keep nothing.")

    @model_validator(mode="after")
    def _one_budget(self):
        if self.fraction is not None and self.tokens is not None:
            raise ValueError("give either `fraction` or `tokens`, not both")
        return self


class DataSpec(Strict):
    sources: list[Source] = Field(min_length=1)
    seed: int = 42
    num_proc: int | None = Field(None, ge=1, description="Processes that tokenize and pack (default: every core).")
    max_row_bytes: int | None = Field(
        None, gt=0, description="A larger row is quarantined with its size and never read into memory (tokenizing "
        "one costs ~150x its size). Default: 64 bytes per token of training.max_length, at least 1 MiB "
        "(16 MiB without a max_length): room for any row that fits max_length.")


class PeftSpec(Strict):
    r: int = Field(16, gt=0)
    lora_alpha: int = Field(32, gt=0)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


# ----------------------------------------------------------------------------------------------
# Stage recipes
# ----------------------------------------------------------------------------------------------
class RecipeBase(Strict):
    """What every stage's recipe has: a name, a seed, where it writes; what it reads and what it gets wrong."""

    trains_on: ClassVar[Literal["rows", "pairs"] | None] = None  # a training stage's data (TrainRecipe); None: none

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name: runs/<name>/<stage>.")
    description: str = ""
    seed: int = 42
    output_dir: str | None = Field(None, description="Default: runs/<name>/<stage>.")
    _source: str | None = PrivateAttr(None)  # the YAML file, for messages and manifests
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)  # key path -> line in that file

    def output_path(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}/{self.stage}")

    def inputs(self) -> list[tuple[str, str]]:
        """(key path, reference) of every model and data input the recipe names: checked to exist before
        the stage runs (pipeline/inputs.py) and fingerprinted in its manifest (pipeline/runs.py)."""
        return []

    def problems(self, base_dir: Path) -> list[tuple[str, str]]:
        """(key path, message) of what the recipe gets wrong beyond its schema, found before anything
        loads. `base_dir`: the recipe file's directory (relative paths in it)."""
        return []

    def library_problems(self) -> list[tuple[str, str]]:
        """What only the stage's own libraries can judge, asked of them before anything loads (a training
        stage: TRL builds its config). Slower than `problems()` (it imports them): every run and `prepare`
        check it, `smolalign validate` only with `--trl`."""
        return []


class TrainRecipe(RecipeBase):
    """What every training stage's recipe has: a model, a data mixture and TRL arguments for `trl_config`.
    Each training stage subclasses it beside its module (pipeline/midtrain.py, sft.py, apo.py), naming
    its stage and adding its own rules to `problems()`."""

    trl_config: ClassVar[str] = "SFTConfig"  # the TRL config class that receives `training:`
    # What a step trains on: "rows" (token rows, packed; pipeline/mixture.py) or "pairs" (preference pairs
    # read by the stage; pipeline/data.py). It decides how rows are planned and costed (pipeline/plan.py)
    # and whether a reference model and held-out pairs mean anything.
    trains_on: ClassVar[Literal["rows", "pairs"] | None] = "rows"
    stage: str
    model: ModelSpec
    ref_model: ModelSpec | None = Field(
        None, description="APO only. Default: a frozen copy of `model` (or precomputed log-probs)."
    )
    chat: ChatSpec = ChatSpec()
    data: DataSpec
    training: dict[str, Any] = Field(default_factory=dict, description="Passed to TRL's SFTConfig/DPOConfig.")
    peft: PeftSpec | None = None
    eval_pairs: str | None = Field(
        None, description="APO only: held-out preference pairs (.jsonl, the training rows' layout), scored before "
        "and after training: how often the model prefers chosen over rejected, and the reward margin.")

    @model_validator(mode="after")
    def _eval_pairs_for_apo(self):
        if self.eval_pairs is not None and self.trains_on != "pairs":
            raise ValueError("`eval_pairs` is an APO setting (held-out preference pairs); remove it here")
        return self

    def inputs(self) -> list[tuple[str, str]]:
        out = [("model.name_or_path", self.model.name_or_path)]
        if self.ref_model:
            out.append(("ref_model.name_or_path", self.ref_model.name_or_path))
        out += [(f"data.sources.{i}.path", s.path) for i, s in enumerate(self.data.sources)]
        if self.eval_pairs:
            out.append(("eval_pairs", self.eval_pairs))
        return out

    def problems(self, base_dir: Path) -> list[tuple[str, str]]:
        from pipeline.checks import check_combinations, check_training

        problems = check_training(self) + self.stage_problems()
        if self.ref_model is not None and self.trains_on != "pairs":
            problems.append(("ref_model", "only the apo stage uses a reference model"))
        return problems + check_combinations(self, base_dir)

    def library_problems(self) -> list[tuple[str, str]]:
        from pipeline.checks import trl_build_problems

        return trl_build_problems(self)

    def stage_problems(self) -> list[tuple[str, str]]:
        """The rules of this training stage alone (mid-training's loss and packing, APO's reference model);
        listed after TRL's argument checks and before the combinations every training stage shares."""
        return []
