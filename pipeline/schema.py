"""Typed recipes: one pydantic schema per stage, with help text and cross-field rules in one place.

A recipe is YAML (`recipes/`), loaded and checked by pipeline/recipe.py. Every model here forbids
unknown keys, so a typo is an error with a suggestion rather than a silently ignored setting.
The `training:` block is TRL's own (SFTConfig / DPOConfig) and is checked against TRL in
pipeline/checks.py; task names and filter settings are checked by the stages that own them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator

from pipeline.chat import DEFAULT_CUTOFF, DEFAULT_DATE

TRAIN_STAGES = ("midtrain", "sft", "apo")
STAGES = ("midtrain", "synth-traces", "synth-pairs", "sft", "apo", "merge", "eval")


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


class SamplingSpec(Strict):
    """SmolLM3's published defaults."""

    temperature: float = Field(0.6, ge=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_new_tokens: int = Field(4096, gt=0)
    seed: int = 0


class BackendSpec(Strict):
    kind: Literal["transformers", "vllm", "openai"] = "transformers"
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = Field(None, gt=0, description="vLLM context; above the checkpoint's native "
                                      "length, YaRN rope scaling is applied (SmolLM3: x2 for 128k).")
    hf_overrides: dict[str, Any] | None = Field(None, description="vLLM: config overrides, instead of the "
                                                "automatic YaRN scaling.")
    enforce_eager: bool = Field(False, description="vLLM: no CUDA graphs or torch.compile. Starts faster, decodes "
                                "slower; for short runs and vLLM's CPU build (engine start ~30 s instead of ~100 s).")
    base_url: str | None = Field(None, description="For `openai`: the `vllm serve` endpoint; `user:password@` in it "
                                  "is sent as HTTP basic auth and never shown.")
    served_model_name: str | None = Field(None, description="For `openai`: the model name the server serves "
                                          "(`vllm serve --served-model-name`); default the model path.")
    api_key_env: str | None = Field(None, description="For `openai`: the environment variable holding the API key "
                                    "(`vllm serve --api-key`); the key itself never goes in a recipe.")
    concurrency: int = Field(32, ge=1, description="For `openai`: requests in flight at once.")
    timeout_s: float = Field(600, gt=0, description="For `openai`: seconds to wait for one reply.")
    retry_budget_s: float = Field(600, ge=0, description="For `openai`: how long to keep retrying 429/5xx/"
                                  "connection errors (with backoff and Retry-After) before giving up.")
    batch_size: int = Field(8, ge=1, description="Prompts per batch for the transformers backend.")

    @model_validator(mode="after")
    def _url(self):
        if self.kind == "openai" and not self.base_url:
            raise ValueError("backend `openai` needs `base_url` (e.g. http://host:8000/v1)")
        if self.enforce_eager and self.kind != "vllm":
            raise ValueError(f"`enforce_eager` is a setting of backend `vllm`, not `{self.kind}` (for `openai`, "
                             "start the server with `--enforce-eager`)")
        return self


# ----------------------------------------------------------------------------------------------
# Stage recipes
# ----------------------------------------------------------------------------------------------
class _RecipeBase(Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="Run name: runs/<name>/<stage>.")
    description: str = ""
    seed: int = 42
    output_dir: str | None = Field(None, description="Default: runs/<name>/<stage>.")
    _source: str | None = PrivateAttr(None)  # the YAML file, for messages and manifests
    _lines: dict[str, int] = PrivateAttr(default_factory=dict)  # key path -> line in that file

    def output_path(self) -> Path:
        return Path(self.output_dir or f"runs/{self.name}/{self.stage}")


class TrainRecipe(_RecipeBase):
    """midtrain / sft / apo: a model, a data mixture and TRL arguments."""

    stage: Literal["midtrain", "sft", "apo"]
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
        if self.eval_pairs is not None and self.stage != "apo":
            raise ValueError("`eval_pairs` is an APO setting (held-out preference pairs); remove it here")
        return self


class FilterSpec(Strict):
    """Filters of generated data (synth/filters.py); each dropped row is counted and kept with its reason."""

    drop_truncated: bool = Field(True, description="Drop generations that hit max_new_tokens.")
    require_think_block: bool = Field(True, description="Think mode needs one well-formed, non-empty think block.")
    dedup: Literal["none", "exact", "exact_and_near"] = Field(
        "exact_and_near", description="Exact (normalised prompt + answer) and near (MinHash LSH on answers).")
    near_threshold: float = Field(0.85, gt=0, le=1, description="Jaccard similarity of answer 5-grams.")
    decontaminate: bool = Field(True, description="Drop prompts sharing an n-gram with our eval tasks' prompts.")
    ngram: int = Field(13, ge=1, description="Words per n-gram for decontamination.")
    verify: Literal["math"] | None = Field(None, description="`math`: keep traces whose answer matches `answer`.")


class SynthRecipe(_RecipeBase):
    """synth-traces (teacher in thinking mode) / synth-pairs (strong = chosen, weak = rejected)."""

    stage: Literal["synth-traces", "synth-pairs"]
    teacher: ModelSpec
    weak: ModelSpec | None = Field(None, description="synth-pairs: the model whose answers are rejected.")
    backend: BackendSpec = BackendSpec()
    sampling: SamplingSpec = SamplingSpec()
    prompts: DataSpec
    modes: list[Literal["think", "no_think"]] = Field(["think", "no_think"], min_length=1)
    max_prompts: int | None = Field(None, gt=0)
    prefill_think: bool = Field(False, description="Think mode: start the assistant turn with `<think>\\n` for a "
                                "teacher whose template does not open one itself (the trace keeps it).")
    filters: FilterSpec = FilterSpec()

    @model_validator(mode="after")
    def _weak_for_pairs(self):
        if self.stage == "synth-pairs" and self.weak is None:
            raise ValueError("synth-pairs needs `weak` (the model whose answers become `rejected`)")
        if self.weak is not None and self.weak.name_or_path == self.teacher.name_or_path:
            raise ValueError("`weak` and `teacher` are the same model: a pair would compare a model with itself")
        if self.stage == "synth-traces" and self.weak is not None:
            raise ValueError("synth-traces uses only `teacher`; remove `weak`")
        return self


class MergeInput(Strict):
    path: str
    weight: float | None = Field(None, gt=0)


class MergeRecipe(_RecipeBase):
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

    @model_validator(mode="after")
    def _sweep_weights(self):
        bad = [w for w in self.sweep if not 0 < w <= 1]
        if bad:
            raise ValueError(f"sweep weights must be in (0, 1]; got {bad}")
        return self


class EvalRecipe(_RecipeBase):
    stage: Literal["eval"]
    models: list[str] = Field(min_length=1, description="Checkpoints: run dirs, local dirs, Hub IDs, embedded:...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "bfloat16"
    tasks: dict[str, dict[str, Any]] = Field(min_length=1, description="task name -> options (n, lengths, ...)")
    modes: list[Literal["think", "no_think"]] = Field(["think", "no_think"], min_length=1)
    backend: BackendSpec = BackendSpec()
    sampling: SamplingSpec = SamplingSpec()
    chat: ChatSpec = ChatSpec()


RECIPE_CLASSES = {
    **{s: TrainRecipe for s in TRAIN_STAGES},
    "synth-traces": SynthRecipe, "synth-pairs": SynthRecipe, "merge": MergeRecipe, "eval": EvalRecipe,
}
