"""Typed recipes: the shared specs (model, chat, data sources, LoRA), the base every stage's recipe
extends, and the base of the training stages' recipes; help text and cross-field rules in one place.

A recipe is YAML (`recipes/`), loaded and checked by pipeline/core/recipe.py. Every model here forbids
unknown keys, so a typo is an error with a suggestion rather than a silently ignored setting.
Every stage owns its recipe class, beside its stage module (pipeline/training/midtrain.py, sft.py, apo.py,
synth/schema.py, merge/schema.py, eval/schema.py; generation's backend and sampling specs in
pipeline/generation.py); the registry
pipeline/core/stages.py says which class reads which stage. A recipe says itself what it reads
(`inputs()`) and what it gets wrong beyond its schema (`problems()`), so the foundation branches on
no recipe type. The `training:` block is TRL's own (SFTConfig / DPOConfig) and is checked against
TRL in pipeline/core/checks.py.
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, field_validator, model_validator

from pipeline.core.chat import DEFAULT_CUTOFF, DEFAULT_DATE


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
        "sdpa (pipeline/training/train.py choose_attention); the choice and why are in the manifest and the first log "
        "line.")


class ChatSpec(Strict):
    template: str = Field(
        "smollm3",
        description="`smollm3` (our dual-mode template, installed on every checkpoint we write), "
        "`model` (the tokenizer's own), or a path to a .jinja file.",
    )
    today_date: str = Field(DEFAULT_DATE, description="Fixed date stamped in the system turn (reproducible data), "
                            "written as the system turn shows it: `01 July 2025` (a YAML date, 2025-07-01, is "
                            "written that way for you).")
    knowledge_cutoff: str = Field(DEFAULT_CUTOFF,
                                  description="Month and year, as the system turn shows it: `June 2025`.")

    @field_validator("today_date", mode="before")
    @classmethod
    def _a_day(cls, value):
        return _as_date_text(value, "%d %B %Y", "a day, month name and year, e.g. `01 July 2025`")

    @field_validator("knowledge_cutoff", mode="before")
    @classmethod
    def _a_month(cls, value):
        return _as_date_text(value, "%B %Y", "a month name and year, e.g. `June 2025`")


def _as_date_text(value, form: str, what: str):
    """A date as the system turn writes it (`form`), from that text, an ISO date (2025-07-01) or a YAML date: a
    date written another way would reach the training data as it is, so it is refused."""
    if isinstance(value, datetime.datetime):
        value = value.date()
    if isinstance(value, datetime.date):
        return value.strftime(form)
    if not isinstance(value, str):
        raise ValueError(f"not a date: write {what}")
    try:
        return datetime.date.fromisoformat(value.strip()).strftime(form)
    except ValueError:
        pass
    try:
        return datetime.datetime.strptime(value.strip(), form).strftime(form)  # one way: `1 July` is `01 July`
    except ValueError:
        raise ValueError(f"not a date written as {what}") from None


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


def source_label(path: str, split: str = "train", name: str | None = None) -> str:
    """How reports, plans and errors name a source: `path`, then the Hub config (`name`) where there is
    one, then the split where it is not `train`: `HuggingFaceTB/smoltalk2:SFT:smoltalk_smollm3_...`."""
    return ":".join([path] + ([name] if name else []) + ([split] if split != "train" else []))


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
# What a training stage's step trains on:
#   rows     token rows, built, budgeted and packed ahead of the job (pipeline/data/mixture.py)
#   pairs    preference pairs (a prompt, a chosen and a rejected answer), read by the stage (pipeline/data/rows.py)
#   prompts  prompts alone: the stage generates the completions it trains on (online RL), so its plan costs the
#            generated tokens as well as the training (pipeline/planning/plan.py), from what its own plan says
TrainsOn = Literal["rows", "pairs", "prompts"]


class RecipeBase(Strict):
    """What every stage's recipe has: a name, a seed, where it writes; what it reads and what it gets wrong."""

    trains_on: ClassVar[TrainsOn | None] = None  # a training stage's data (TrainRecipe); None: it trains nothing

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
        the stage runs (pipeline/core/inputs.py) and fingerprinted in its manifest (pipeline/core/runs.py)."""
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
    Each training stage subclasses it beside its module (pipeline/training/midtrain.py, sft.py, apo.py), naming
    its stage and adding its own rules to `problems()`."""

    trl_config: ClassVar[str] = "SFTConfig"  # the TRL config class that receives `training:`
    trains_on: ClassVar[TrainsOn | None] = "rows"  # what a step trains on (TrainsOn, above)
    stage: str
    model: ModelSpec
    chat: ChatSpec = ChatSpec()
    data: DataSpec
    training: dict[str, Any] = Field(default_factory=dict, description="Passed to TRL's config of the stage "
                                     "(`trl_config`: SFTConfig, DPOConfig, ...), but for `global_batch_size` (ours: "
                                     "rows per optimizer step; the stage derives gradient_accumulation_steps from the "
                                     "GPU count, pipeline/core/batch.py).")
    peft: PeftSpec | None = None

    def inputs(self) -> list[tuple[str, str]]:
        return [("model.name_or_path", self.model.name_or_path)] + [
            (f"data.sources.{i}.path", s.path) for i, s in enumerate(self.data.sources)]

    def problems(self, base_dir: Path) -> list[tuple[str, str]]:
        from pipeline.core.batch import batch_problems
        from pipeline.core.checks import check_combinations, check_training

        problems = check_training(self) + batch_problems(self.training) + self.stage_problems()
        return problems + check_combinations(self, base_dir)

    def library_problems(self) -> list[tuple[str, str]]:
        from pipeline.core.checks import trl_build_problems

        return trl_build_problems(self)

    def stage_problems(self) -> list[tuple[str, str]]:
        """The rules of this training stage alone (mid-training's loss and packing, APO's reference model);
        listed after TRL's argument checks and before the combinations every training stage shares."""
        return []
