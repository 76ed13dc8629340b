"""Typed recipes: one schema per stage, loaded from YAML with `--set key=value` overrides.

Everything a bad recipe can get wrong is caught here, before any model or dataset loads, and
reported as `file:line key.path: what is wrong (what is allowed)`. Three layers:

1. schema   - pydantic models with `extra="forbid"`: unknown keys, wrong types, bad literals;
2. TRL args - the `training:` block is passed through to TRL's `SFTConfig` / `DPOConfig`; its keys
              and `choices` are checked against those dataclasses, so a TRL upgrade moves the rules;
3. combos   - known-bad combinations (a packing strategy TRL no longer has, assistant-only loss on a
              template without generation markers, DPO `padding_free`, ...).

Whether the inputs a recipe names exist (a local checkpoint, a data file) is checked separately by
`check_inputs`, at run time: shipped recipes name outputs of earlier stages that do not exist yet.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

TRAIN_STAGES = ("midtrain", "sft", "apo")
STAGES = ("midtrain", "synth-traces", "synth-pairs", "sft", "apo", "merge", "eval")

# DPO losses of TRL 1.16 (`DPOConfig.loss_type` has no `choices` metadata, only prose).
DPO_LOSS_TYPES = (
    "sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair", "sppo_hard", "aot",
    "aot_unpaired", "apo_zero", "apo_down", "discopop", "sft", "sigmoid_norm",
)
# Keys of TRL's configs that the stage sets itself; a recipe setting them would be ignored.
STAGE_OWNED_TRAINING_KEYS = {
    "output_dir": "set `output_dir` at the top level of the recipe (default runs/<name>/<stage>)",
    "seed": "set `seed` at the top level of the recipe",
    "dataset_text_field": "the stage builds conversational rows; there is no text field",
    "model_init_kwargs": "use the `model:` block (dtype, attn_implementation, revision)",
}


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-5` as a float (YAML 1.2); PyYAML's 1.1 rules make it a string,
    and a learning rate of "1e-5" would reach TRL as text."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class RecipeError(ValueError):
    """A recipe that cannot run. Lists every problem found, each with its key path."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = [f"{source}: invalid recipe ({len(problems)} problem{'s' if len(problems) > 1 else ''})"]
        lines += [f"  {key or '<top level>'}: {msg}" for key, msg in problems]
        super().__init__("\n".join(lines))


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
    attn_implementation: Literal["eager", "sdpa", "flash_attention_2", "flash_attention_3"] = "sdpa"


class ChatSpec(Strict):
    template: str = Field(
        "smollm3",
        description="`smollm3` (our dual-mode template, installed on every checkpoint we write), "
        "`model` (the tokenizer's own), or a path to a .jinja file.",
    )
    today_date: str = Field("01 July 2025", description="Fixed date stamped in the system turn.")
    knowledge_cutoff: str = "June 2025"


class Source(Strict):
    path: str = Field(description="Hub dataset ID or local .jsonl/.json/.parquet file.")
    name: str | None = Field(None, description="Hub dataset config (subset).")
    split: str = "train"
    mode: Literal["think", "no_think", "from_row"] = Field(
        "from_row", description="Reasoning mode of the rows; `from_row` reads chat_template_kwargs."
    )
    fraction: float | None = Field(None, gt=0, description="Share of rows to take; >1 upsamples.")
    tokens: int | None = Field(None, gt=0, description="Token budget; rows are up/down-sampled to it.")

    @model_validator(mode="after")
    def _one_budget(self):
        if self.fraction is not None and self.tokens is not None:
            raise ValueError("give either `fraction` or `tokens`, not both")
        return self


class DataSpec(Strict):
    sources: list[Source] = Field(min_length=1)
    seed: int = 42


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
    data_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    max_model_len: int | None = None
    base_url: str | None = Field(None, description="For `openai`: the `vllm serve` endpoint.")
    batch_size: int = Field(8, ge=1, description="Prompts per batch for the transformers backend.")

    @model_validator(mode="after")
    def _url(self):
        if self.kind == "openai" and not self.base_url:
            raise ValueError("backend `openai` needs `base_url` (e.g. http://host:8000/v1)")
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
    filters: dict[str, Any] = Field(default_factory=dict)

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


Recipe = Annotated[Union[TrainRecipe, SynthRecipe, MergeRecipe, EvalRecipe], Field(discriminator="stage")]
_RECIPE_CLASS = {
    **{s: TrainRecipe for s in TRAIN_STAGES},
    "synth-traces": SynthRecipe, "synth-pairs": SynthRecipe, "merge": MergeRecipe, "eval": EvalRecipe,
}


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------
def load_recipe(path: str | Path, overrides: list[str] = (), stage: str | None = None):
    """Read, override, validate. Raises RecipeError naming the file, line and key of every problem."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(str(path), [("", "file not found")])
    text = path.read_text()
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as e:
        raise RecipeError(str(path), [("", f"not valid YAML: {e}")]) from None
    if not isinstance(raw, dict):
        raise RecipeError(str(path), [("", "a recipe is a YAML mapping (key: value)")])
    lines = _key_lines(text)
    for item in overrides:
        _apply_override(raw, item, str(path))

    source = str(path)
    declared = raw.get("stage")
    if stage is not None and declared != stage:
        raise RecipeError(source, [("stage", f"this recipe is for stage `{declared}`, not `{stage}`; "
                                             f"run `smolalign {declared} --recipe {path}`")])
    if declared not in _RECIPE_CLASS:
        raise RecipeError(source, [("stage", f"got {declared!r}; allowed: {', '.join(STAGES)}")])
    cls = _RECIPE_CLASS[declared]
    try:
        recipe = cls.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(source, _pydantic_problems(e, cls, lines)) from None

    problems = _check_training_args(recipe) + _check_combinations(recipe, path.parent)
    if problems:
        raise RecipeError(source, [(_at(k, lines), m) for k, m in problems])
    recipe._source = source
    return recipe


def recipe_hash(recipe) -> str:
    """sha256 of the resolved recipe, canonical JSON: two runs with equal hashes ran the same recipe."""
    blob = json.dumps(recipe.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def _apply_override(raw: dict, item: str, source: str) -> None:
    """`a.b.0.c=value`: the value is parsed as YAML (so 1e-5, true, [a, b] keep their types)."""
    if "=" not in item:
        raise RecipeError(source, [(item, "an override is key.path=value, e.g. training.learning_rate=1e-5")])
    key, value = item.split("=", 1)
    parts = key.strip().split(".")
    node: Any = raw
    for i, part in enumerate(parts[:-1]):
        nxt = _child(node, part)
        if nxt is None:
            nxt = {}
            _set_child(node, part, nxt, ".".join(parts[: i + 1]), source)
        node = nxt
        if not isinstance(node, (dict, list)):
            raise RecipeError(source, [(".".join(parts[: i + 1]), f"--set {key}: this key holds a value, not a mapping")])
    _set_child(node, parts[-1], parse_yaml(value), key, source)


def _child(node, part):
    if isinstance(node, list):
        return node[int(part)] if part.isdigit() and int(part) < len(node) else None
    return node.get(part)


def _set_child(node, part, value, key, source):
    if isinstance(node, list):
        if not (part.isdigit() and int(part) < len(node)):
            raise RecipeError(source, [(key, f"--set: list index {part!r} out of range (list has {len(node)} items)")])
        node[int(part)] = value
    else:
        node[part] = value


def _pydantic_problems(err: ValidationError, cls, lines: dict[str, int]) -> list[tuple[str, str]]:
    out = []
    for e in err.errors():
        loc = [str(p) for p in e["loc"] if not str(p).startswith("function-after")]
        # Drop pydantic's union tag (e.g. "list[str]") from the path; keep real keys and indexes.
        loc = [p for p in loc if "[" not in p]
        key = ".".join(loc)
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(cls, loc[:-1])
            hint = difflib.get_close_matches(loc[-1], allowed, n=1)
            msg = "unknown key" + (f" (did you mean `{hint[0]}`?)" if hint else "")
            msg += f"; allowed here: {', '.join(allowed)}"
        elif e["type"] == "missing":
            msg = "required key is missing"
        else:
            msg += f" (got {e.get('input')!r})" if not isinstance(e.get("input"), (dict, list)) else ""
        out.append((_at(key, lines), msg))
    return out


def _allowed_keys(cls, loc: list[str]) -> list[str]:
    model = cls
    for part in loc:
        if part.isdigit():
            continue
        field = model.model_fields.get(part)
        model = _model_in(field.annotation) if field else None
        if model is None:
            return []
    return list(model.model_fields)


def _model_in(annotation):
    """The pydantic model inside `X | None` or `list[X]`, if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found:
            return found
    return None


# ----------------------------------------------------------------------------------------------
# TRL pass-through and known-bad combinations
# ----------------------------------------------------------------------------------------------
def trl_config_class(stage: str):
    """The TRL config that receives `training:`. Imported lazily: trl import takes seconds."""
    from trl import DPOConfig, SFTConfig

    return DPOConfig if stage == "apo" else SFTConfig


def _check_training_args(recipe) -> list[tuple[str, str]]:
    if not isinstance(recipe, TrainRecipe):
        return []
    cls = trl_config_class(recipe.stage)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    problems = []
    for key, value in recipe.training.items():
        where = f"training.{key}"
        if key in STAGE_OWNED_TRAINING_KEYS:
            problems.append((where, f"set by the stage, not here: {STAGE_OWNED_TRAINING_KEYS[key]}"))
            continue
        if key in RENAMED_TRAINING_KEYS:
            problems.append((where, RENAMED_TRAINING_KEYS[key]))
            continue
        if key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            problems.append((where, f"not an argument of TRL's {cls.__name__}"
                                    + (f" (did you mean `{hint[0]}`?)" if hint else "")))
            continue
        choices = fields[key].metadata.get("choices")
        if choices and value not in choices:
            problems.append((where, f"{value!r} is not one of TRL's choices: {', '.join(map(str, choices))}"
                                    + _REMOVED_HINTS.get((key, value), "")))
    return problems


# Keys that published (transformers 4) recipes use and transformers 5 removed or deprecated.
RENAMED_TRAINING_KEYS = {
    "warmup_ratio": "removed in transformers 5: use `warmup_steps` with a float in [0, 1) (a ratio of total steps)",
    "gradient_checkpointing": "deprecated in transformers 5 (removed in 6): use `activation_checkpointing`",
    "gradient_checkpointing_kwargs": "deprecated in transformers 5: use `activation_checkpointing_kwargs`",
    "overwrite_output_dir": "removed in transformers 5: use `smolalign STAGE --overwrite`",
}
_REMOVED_HINTS = {
    ("packing_strategy", "ffd"): " (`ffd` was removed from TRL; best-fit decreasing is `bfd`)",
}


def _check_eval_tasks(tasks: dict[str, dict[str, Any]]) -> list[tuple[str, str]]:
    """Task names and their options, from the task classes' own signatures (+ `n`)."""
    import inspect

    from eval.tasks import TASKS

    problems = []
    for name, options in tasks.items():
        if name not in TASKS:
            problems.append((f"tasks.{name}", f"unknown task; known: {', '.join(TASKS)}"))
            continue
        allowed = {"n"} | set(inspect.signature(TASKS[name]).parameters) - {"count_tokens"}
        for key in set(options or {}) - allowed:
            problems.append((f"tasks.{name}.{key}", f"unknown option; allowed: {', '.join(sorted(allowed))}"))
    return problems


def _check_combinations(recipe, base_dir: Path) -> list[tuple[str, str]]:
    if isinstance(recipe, SynthRecipe):
        from synth.filters import FILTER_SETTINGS

        return [(f"filters.{k}", f"unknown filter setting; allowed: {', '.join(sorted(FILTER_SETTINGS))}")
                for k in recipe.filters if k not in FILTER_SETTINGS]
    if isinstance(recipe, EvalRecipe):
        return _check_eval_tasks(recipe.tasks)
    if isinstance(recipe, MergeRecipe):
        return [(k.replace("tasks.", "sweep_tasks.", 1), m) for k, m in _check_eval_tasks(recipe.sweep_tasks)]
    if not isinstance(recipe, TrainRecipe):
        return []
    t, problems = recipe.training, []
    if recipe.stage == "midtrain":
        if t.get("assistant_only_loss") or t.get("completion_only_loss"):
            problems.append(("training.assistant_only_loss",
                             "mid-training trains on every token; remove assistant_only_loss/completion_only_loss"))
        if t.get("packing") and t.get("packing_strategy", "bfd") != "wrapped":
            problems.append(("training.packing_strategy", "mid-training uses wrapped packing: set `wrapped`"))
    if recipe.stage == "apo":
        loss = t.get("loss_type", "sigmoid")
        for name in [loss] if isinstance(loss, str) else loss:
            if name not in DPO_LOSS_TYPES:
                problems.append(("training.loss_type", f"{name!r} is not a TRL DPO loss; allowed: {', '.join(DPO_LOSS_TYPES)}"))
        if t.get("padding_free"):
            problems.append(("training.padding_free",
                             "TRL's DPO trainer ignores padding_free (it warns and pads); remove it"))
        if recipe.ref_model is not None and t.get("precompute_ref_log_probs"):
            problems.append(("ref_model", "precompute_ref_log_probs computes them with the policy's start "
                                          "weights; drop `ref_model` or the precompute flag"))
    elif recipe.ref_model is not None:
        problems.append(("ref_model", "only the apo stage uses a reference model"))
    if t.get("assistant_only_loss"):
        template = template_text(recipe.chat.template, base_dir)
        if template is not None and "{% generation %}" not in template.replace("{%- generation %}", "{% generation %}"):
            problems.append(("chat.template", f"assistant_only_loss needs `{{% generation %}}` markers, and the "
                                              f"template `{recipe.chat.template}` has none; use `smollm3`"))
    if t.get("packing") and t.get("padding_free") is False:
        # Measured: TRL's collator then sends an all-ones attention_mask, and eager/sdpa attend across
        # the packed documents (logits differ from per-document ones by ~1.1 on the tiny model).
        problems.append(("training.padding_free", "packed rows without padding-free attention attend across "
                                                  "documents; remove `padding_free: false`"))
    if t.get("bf16") and t.get("fp16"):
        problems.append(("training.bf16", "bf16 and fp16 are both set; choose one"))
    return problems


def template_text(template: str, base_dir: Path = Path(".")) -> str | None:
    """Text of a named or file template; None for `model` (known only once the tokenizer loads)."""
    if template == "model":
        return None
    if template == "smollm3":
        builtin = Path(__file__).parent / "templates" / "smollm3.jinja"
        return builtin.read_text() if builtin.is_file() else None
    for candidate in (Path(template), base_dir / template):
        if candidate.is_file():
            return candidate.read_text()
    raise RecipeError("chat.template", [("chat.template", f"template file {template!r} not found; "
                                                          "use `smollm3`, `model` or a .jinja path")])


# ----------------------------------------------------------------------------------------------
# Line numbers for messages: "recipes/x.yaml:12 training.packing_strategy"
# ----------------------------------------------------------------------------------------------
def _key_lines(text: str) -> dict[str, int]:
    try:
        root = yaml.compose(text)
    except yaml.YAMLError:
        return {}
    lines: dict[str, int] = {}

    def walk(node, prefix):
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                key = f"{prefix}.{k.value}" if prefix else str(k.value)
                lines[key] = k.start_mark.line + 1
                walk(v, key)
        elif isinstance(node, yaml.SequenceNode):
            for i, v in enumerate(node.value):
                key = f"{prefix}.{i}"
                lines[key] = v.start_mark.line + 1
                walk(v, key)

    walk(root, "")
    return lines


def _at(key: str, lines: dict[str, int]) -> str:
    """`key (line N)` with the nearest line we know for the key or one of its parents."""
    parts = key.split(".")
    while parts:
        line = lines.get(".".join(parts))
        if line:
            return f"{key} (line {line})"
        parts.pop()
    return key


# ----------------------------------------------------------------------------------------------
# Inputs
# ----------------------------------------------------------------------------------------------
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
LOCAL_HINT = re.compile(r"^(\.|/|~|runs/)|\.(jsonl|json|parquet|jinja|safetensors)$")


def classify_input(ref: str) -> str:
    """'embedded', 'local' (exists or clearly a path) or 'hub'."""
    if ref.startswith("embedded:"):
        return "embedded"
    if Path(ref).expanduser().exists() or LOCAL_HINT.search(ref) or ref.count("/") != 1:
        return "local"
    return "hub" if HUB_ID.match(ref) else "local"


def recipe_inputs(recipe) -> list[tuple[str, str]]:
    """(key path, reference) for every model/data input the recipe names."""
    out = []
    if isinstance(recipe, TrainRecipe):
        out.append(("model.name_or_path", recipe.model.name_or_path))
        if recipe.ref_model:
            out.append(("ref_model.name_or_path", recipe.ref_model.name_or_path))
        out += [(f"data.sources.{i}.path", s.path) for i, s in enumerate(recipe.data.sources)]
    elif isinstance(recipe, SynthRecipe):
        out.append(("teacher.name_or_path", recipe.teacher.name_or_path))
        if recipe.weak:
            out.append(("weak.name_or_path", recipe.weak.name_or_path))
        out += [(f"prompts.sources.{i}.path", s.path) for i, s in enumerate(recipe.prompts.sources)]
    elif isinstance(recipe, MergeRecipe):
        out += [(f"soup.{i}.path", m.path) for i, m in enumerate(recipe.soup)]
        out.append(("long_context.path", recipe.long_context.path))
    elif isinstance(recipe, EvalRecipe):
        out += [(f"models.{i}", m) for i, m in enumerate(recipe.models)]
    return out


def check_inputs(recipe) -> None:
    """Every local input exists; embedded names are known. Raises RecipeError listing the missing."""
    from pipeline.models import EMBEDDED

    problems = []
    for key, ref in recipe_inputs(recipe):
        kind = classify_input(ref)
        if kind == "embedded" and ref.removeprefix("embedded:") not in EMBEDDED:
            problems.append((key, f"unknown embedded model {ref!r}; known: "
                                  + ", ".join(f"embedded:{n}" for n in EMBEDDED)))
        elif kind == "local" and is_glob(ref):
            if not expand_glob(ref):
                problems.append((key, f"no path matches {ref!r}; run the stage that writes it first"))
        elif kind == "local" and not Path(ref).expanduser().exists():
            hint = ""
            if ref.startswith("runs/"):
                hint = f"; it is the output of an earlier stage: run that stage first (`make {ref.split('/')[2] if ref.count('/') >= 2 else '...'}`)"
            problems.append((key, f"{ref!r} does not exist{hint}"))
    if problems:
        raise RecipeError(recipe._source or recipe.name, problems)


def is_glob(ref: str) -> bool:
    return any(c in ref for c in "*?[")


def expand_glob(ref: str) -> list[str]:
    """Sorted matches of a glob input (e.g. every APO checkpoint for a soup)."""
    import glob

    return sorted(glob.glob(str(Path(ref).expanduser())))
