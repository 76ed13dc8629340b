"""What a training recipe can get wrong beyond its schema, checked before anything loads.

1. TRL's arguments: the `training:` block is passed to TRL's `SFTConfig` / `DPOConfig`. Each key
   must be one of its fields, each value must have the field's type (TRL itself accepts a learning
   rate of "abc" and fails hours later), lie in a sane range, and be one of the field's choices.
   These facts come from the table generated from the pinned TRL (pipeline/core/trl_fields.py), so
   `smolalign validate` answers without importing TRL (seconds of torch and transformers).
2. TRL's own checks: `trl_build_problems` builds the config for real, so its `__post_init__` runs
   (cross-field rules such as `load_best_model_at_end` with mismatched strategies, a scheduler that
   needs an eval strategy). It imports TRL: every stage run and `prepare` do it before anything
   loads (TRL is imported for the run anyway), `smolalign validate --trl` on request. Hardware-bound
   settings (bf16, Liger, trackers) are left out of that build: the training stage checks them
   against the machine when it starts (pipeline/training/train.py). Our own keys (`global_batch_size`) are
   not TRL's: pipeline/core/batch.py checks them, and neither check passes them to TRL.
3. Known-bad combinations every training stage shares: assistant-only loss on a template without
   `{% generation %}` markers, packing without a max_length, packed rows without padding-free
   attention, bf16 with fp16. A stage's own rules (mid-training's loss and packing, APO's
   `padding_free` and reference model) are in its recipe class's `stage_problems()`, beside it.

Each problem is a (key path, message) pair; pipeline/core/recipe.py turns them into one error that
names the file and the line.
"""

from __future__ import annotations

import difflib
import tempfile
from pathlib import Path
from typing import Any

from pipeline.core.batch import OWN_TRAINING_KEYS, Batch, BatchError, batch_for, trl_training
from pipeline.core.chat import TemplateError, generation_markers_problem, template_text
from pipeline.core.redaction import REDACTED, is_secret_key
from pipeline.core.stages import recipe_class
from pipeline.core.trl_fields import annotation, config_fields

Problems = list[tuple[str, str]]

# Keys of TRL's configs that the stage sets itself; a recipe setting them would be ignored.
STAGE_OWNED_TRAINING_KEYS = {
    "output_dir": "set `output_dir` at the top level of the recipe (default runs/<name>/<stage>)",
    "seed": "set `seed` at the top level of the recipe",
    "dataset_text_field": "the stage builds conversational rows; there is no text field",
    "model_init_kwargs": "use the `model:` block (dtype, attn_implementation, revision)",
}
# Keys that published (transformers 4) recipes use and transformers 5 removed or deprecated.
RENAMED_TRAINING_KEYS = {
    "warmup_ratio": "removed in transformers 5: use `warmup_steps` with a float in [0, 1) (a ratio of total steps)",
    "gradient_checkpointing": "deprecated in transformers 5 (removed in 6): use `activation_checkpointing`",
    "gradient_checkpointing_kwargs": "deprecated in transformers 5: use `activation_checkpointing_kwargs`",
    "overwrite_output_dir": "removed in transformers 5: use `smolalign STAGE --overwrite`",
    "max_seq_length": "renamed in TRL 0.20: use `max_length` (tokens of a row; of a packed row with packing)",
}
_REMOVED_HINTS = {
    ("packing_strategy", "ffd"): " (`ffd` was removed from TRL; best-fit decreasing is `bfd`)",
}
# Ranges TRL does not check. (lowest, highest, lowest allowed itself?)
_RANGES: dict[str, tuple[float, float, bool]] = {
    "learning_rate": (0, float("inf"), False), "num_train_epochs": (0, float("inf"), False),
    "max_length": (0, float("inf"), False), "per_device_train_batch_size": (1, float("inf"), True),
    "gradient_accumulation_steps": (1, float("inf"), True), "warmup_steps": (0, float("inf"), True),
    "max_grad_norm": (0, float("inf"), True), "weight_decay": (0, float("inf"), True),
    "beta": (0, float("inf"), False), "logging_steps": (0, float("inf"), False),
    "save_steps": (0, float("inf"), False), "save_total_limit": (1, float("inf"), True),
    "adam_epsilon": (0, float("inf"), False), "adam_beta1": (0, 1, True), "adam_beta2": (0, 1, True),
}
# Settings that depend on the machine; left out when TRL's config is built ahead of the run.
_HARDWARE_KEYS = {"bf16": False, "fp16": False, "tf32": None, "use_liger_kernel": False, "report_to": "none",
                  "deepspeed": None, "fsdp": None, "fsdp_config": None, "torch_compile": False}


def trl_config_class(stage: str):
    """The TRL config that receives a training stage's `training:` (its recipe's `trl_config`).
    Imported lazily: trl import takes seconds."""
    import trl

    return getattr(trl, recipe_class(stage).trl_config)


# ----------------------------------------------------------------------------------------------
# TRL's arguments
# ----------------------------------------------------------------------------------------------
def check_training(recipe) -> Problems:
    """Keys, types, choices and ranges of `training:`, from the table of TRL's fields (no TRL import)."""
    config = recipe.trl_config
    fields = config_fields(config)
    problems: Problems = []
    for key, value in recipe.training.items():
        where = f"training.{key}"
        if key in OWN_TRAINING_KEYS:  # ours, checked by pipeline/core/batch.py, never passed to TRL
            continue
        if key in STAGE_OWNED_TRAINING_KEYS:
            problems.append((where, f"set by the stage, not here: {STAGE_OWNED_TRAINING_KEYS[key]}"))
        elif key in RENAMED_TRAINING_KEYS:
            problems.append((where, RENAMED_TRAINING_KEYS[key]))
        elif key not in fields:
            hint = difflib.get_close_matches(key, list(fields), n=1)
            problems.append((where, f"not an argument of TRL's {config}"
                                    + (f" (did you mean `{hint[0]}`?)" if hint else "")))
        else:
            problem = _value_problem(key, value, fields[key])
            if problem:
                problems.append((where, problem))
    return problems


def _value_problem(key: str, value: Any, field: dict[str, Any]) -> str | None:
    from pydantic import TypeAdapter, ValidationError

    # a value under a secret key (hub_token) is named by its key only: a short one is not remembered as a secret
    shown = REDACTED if is_secret_key(key) else repr(value)
    choices = field.get("choices")
    if choices:
        # a list field with choices (DPO's loss_type) holds choices; a name alone stands for a list of one
        items = value if isinstance(value, list) and "list[" in field["type"] else [value]
        bad = [item for item in items if item not in choices]
        if bad:
            named = shown if bad[0] is value or is_secret_key(key) else repr(bad[0])
            hint = _REMOVED_HINTS.get((key, bad[0]), "") if isinstance(bad[0], str) else ""
            return f"{named} is not one of TRL's choices: {', '.join(map(str, choices))}{hint}"
    hint = annotation(field["type"])
    try:  # strict: "1e-5x" or "ten" is not a number (our YAML loader already reads 1e-5 as a float)
        TypeAdapter(hint).validate_python(value, strict=True)
    except ValidationError:
        return f"{shown} is not a valid {_type_name(field['type'])}"
    # a config's own default is in range for it (GRPO's beta 0.0: no KL term; DPO's beta must be > 0)
    if key in _RANGES and isinstance(value, (int, float)) and not isinstance(value, bool) \
            and value != field.get("default"):
        low, high, inclusive = _RANGES[key]
        if value < low or (value == low and not inclusive) or value > high:
            bound = f"{'>=' if inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high != float("inf") else "")
            return f"{shown} is out of range: must be {bound}"
    return None


def _type_name(type_text: str) -> str:
    """"int | None" -> "int (or null)": the table's type as a recipe author reads it."""
    members = type_text.split(" | ")
    names = [m for m in members if m != "None"]
    return " or ".join(names) + (" (or null)" if "None" in members else "")


def trl_kwargs(recipe, batch: Batch) -> dict[str, Any]:
    """What TRL's config is built from, by the run (pipeline/training/train.py trl_args) and by the check before
    it alike: the keys the recipe states (our own replaced by what they mean: the accumulation that makes the
    global batch on `batch`'s GPUs), the stage's own settings (TrainRecipe.trl_settings), the recipe's seed."""
    return {**trl_training(recipe.training, batch), **recipe.trl_settings(), "seed": recipe.seed}


def trl_build_problems(recipe) -> Problems:
    """Build TRL's config for real, as the run builds it on one process (machine-bound keys neutral), so its
    own checks run now. Imports TRL."""
    import warnings

    cls = trl_config_class(recipe.stage)
    try:  # the global batch made on one GPU: TRL's own rules on the batch see the batch the recipe states
        batch = batch_for(recipe.settings, 1)
    except BatchError:  # a global batch no GPU count makes: batch_problems says so, and TRL is not asked
        return []
    kwargs = {k: v for k, v in trl_kwargs(recipe, batch).items() if k not in _HARDWARE_KEYS}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            cls(output_dir=tmp, **_HARDWARE_KEYS, **kwargs)
        except (ValueError, TypeError) as e:
            key = next((k for k in kwargs if k in str(e) or str(kwargs[k]) in str(e)), "")
            return [(f"training.{key}" if key else "training", f"TRL refuses it: {str(e).splitlines()[0]}")]
    return []


# ----------------------------------------------------------------------------------------------
# Known-bad combinations
# ----------------------------------------------------------------------------------------------
def check_combinations(recipe, base_dir: Path) -> Problems:
    """Combinations every training stage gets wrong the same way; a stage's own rules are in its recipe
    class's `problems()` (mid-training's in pipeline/training/midtrain.py, APO's in pipeline/training/apo.py)."""
    t, problems = recipe.settings, []  # `.get`: a stage's TRL config may lack a field (GRPOConfig has no packing)
    if t.get("assistant_only_loss"):
        try:
            template = template_text(recipe.chat.template, base_dir)
        except TemplateError as e:
            return problems + [("chat.template", str(e))]
        problem = generation_markers_problem(template, recipe.chat.template)
        if problem:
            problems.append(("chat.template", problem))
    # TRL would pack at its default length (1024): a recipe that packs states the length of its rows
    if t.get("packing") and not (t.given("max_length") and t.max_length) and not t.given("max_seq_length"):
        problems.append(("training.max_length", "packing needs a max_length: the length of a packed row"))
    if t.get("packing") and t.given("padding_free") and t.padding_free is False:
        # Measured: TRL's collator then sends an all-ones attention_mask, and eager/sdpa attend across
        # the packed documents (logits differ from per-document ones by ~1.1 on the tiny model).
        problems.append(("training.padding_free", "packed rows without padding-free attention attend across "
                                                  "documents; remove `padding_free: false`"))
    if t.bf16 and t.fp16:
        problems.append(("training.bf16", "bf16 and fp16 are both set; choose one"))
    return problems
