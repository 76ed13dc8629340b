"""What a training recipe can get wrong beyond its schema, checked before anything loads.

1. TRL's arguments: the `training:` block is passed to TRL's `SFTConfig` / `DPOConfig`. Each key
   must be one of its fields, each value must have the field's type (TRL itself accepts a learning
   rate of "abc" and fails hours later), lie in a sane range, and be one of the field's `choices`;
   then the config is built for real, so TRL's own `__post_init__` checks run at validate time too.
   Hardware-bound settings (bf16, Liger, trackers) are left out of that build: they are checked
   against the machine by the training stage (pipeline/training/train.py) when it starts. Our own keys
   (`global_batch_size`) are not TRL's: pipeline/core/batch.py checks them.
2. Known-bad combinations every training stage shares: assistant-only loss on a template without
   `{% generation %}` markers, packing without a max_length, packed rows without padding-free
   attention, bf16 with fp16. A stage's own rules (mid-training's loss and packing, APO's
   `padding_free` and reference model) are in its recipe class's `stage_problems()`, beside it.

Each problem is a (key path, message) pair; pipeline/core/recipe.py turns them into one error that
names the file and the line.
"""

from __future__ import annotations

import dataclasses
import difflib
import tempfile
import typing
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.core.batch import GLOBAL_BATCH, OWN_TRAINING_KEYS
from pipeline.core.chat import TemplateError, generation_markers_problem, template_text
from pipeline.core.redaction import REDACTED, is_secret_key
from pipeline.core.stages import recipe_class

Problems = list[tuple[str, str]]

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
# Settings that depend on the machine; left out when TRL's config is built at validate time.
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
    cls = trl_config_class(recipe.stage)
    fields = {f.name: f for f in dataclasses.fields(cls)}
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
            problems.append((where, f"not an argument of TRL's {cls.__name__}"
                                    + (f" (did you mean `{hint[0]}`?)" if hint else "")))
        else:
            problem = _value_problem(cls, key, value, fields[key])
            if problem:
                problems.append((where, problem))
    if problems:
        return problems
    return _build_problems(cls, _one_process(recipe.training, fields))


def _one_process(training: dict[str, Any], fields: dict[str, dataclasses.Field]) -> dict[str, Any]:
    """`training` as TRL's config takes it on one process: a stated global batch made by accumulation, so that
    TRL's own rules on the batch (GRPO: whole groups of num_generations completions) see the batch the recipe
    states, not one micro-batch. (A GPU count that cannot make it is pipeline/core/batch.py's to say.)"""
    out = {k: v for k, v in training.items() if k not in OWN_TRAINING_KEYS}
    per_device = training.get("per_device_train_batch_size", fields["per_device_train_batch_size"].default)
    wanted = training.get(GLOBAL_BATCH)
    if isinstance(wanted, int) and isinstance(per_device, int) and per_device > 0 and wanted % per_device == 0:
        out["gradient_accumulation_steps"] = wanted // per_device
    return out


def _value_problem(cls, key: str, value: Any, field: dataclasses.Field) -> str | None:
    from pydantic import TypeAdapter, ValidationError

    if key == "loss_type" and cls.__name__ == "DPOConfig":
        # a name or a list of names; DPO documents them only in prose (SFTConfig's own loss_type,
        # nll or dft, has `choices` and is checked below like every other choice field)
        names = [value] if isinstance(value, str) else value if isinstance(value, list) else [value]
        bad = [n for n in names if n not in DPO_LOSS_TYPES]
        return f"{bad[0]!r} is not a TRL DPO loss; allowed: {', '.join(DPO_LOSS_TYPES)}" if bad else None
    # a value under a secret key (hub_token) is named by its key only: a short one is not remembered as a secret
    shown = REDACTED if is_secret_key(key) else repr(value)
    choices = field.metadata.get("choices")
    if choices and value not in choices:
        return (f"{shown} is not one of TRL's choices: {', '.join(map(str, choices))}"
                + _REMOVED_HINTS.get((key, value), ""))
    hint = _type_hints(cls).get(key)
    if hint is not None:
        try:  # strict: "1e-5x" or "ten" is not a number (our YAML loader already reads 1e-5 as a float)
            TypeAdapter(hint).validate_python(value, strict=True)
        except ValidationError:
            return f"{shown} is not a valid {_type_name(hint)}"
        except Exception:  # a type pydantic cannot check (a class of TRL's): leave it to TRL
            pass
    # a config's own default is in range for it (GRPO's beta 0.0: no KL term; DPO's beta must be > 0)
    if key in _RANGES and isinstance(value, (int, float)) and not isinstance(value, bool) and value != field.default:
        low, high, inclusive = _RANGES[key]
        if value < low or (value == low and not inclusive) or value > high:
            bound = f"{'>=' if inclusive else '>'} {low:g}" + (f" and <= {high:g}" if high != float("inf") else "")
            return f"{shown} is out of range: must be {bound}"
    return None


@lru_cache(maxsize=2)
def _type_hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # an annotation that does not resolve: no type check rather than a crash
        return {}


def _type_name(hint) -> str:
    args = [a for a in (typing.get_args(hint) or (hint,)) if a is not type(None)]
    names = [getattr(a, "__name__", str(a)) for a in args]
    return " or ".join(names) + (" (or null)" if type(None) in typing.get_args(hint) else "")


def _build_problems(cls, training: dict[str, Any]) -> Problems:
    """Build TRL's config for real (machine-bound keys neutral), so its own checks run now."""
    import warnings

    kwargs = {k: v for k, v in training.items() if k not in _HARDWARE_KEYS}
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
    t, problems = recipe.training, []
    if t.get("assistant_only_loss"):
        try:
            template = template_text(recipe.chat.template, base_dir)
        except TemplateError as e:
            return problems + [("chat.template", str(e))]
        problem = generation_markers_problem(template, recipe.chat.template)
        if problem:
            problems.append(("chat.template", problem))
    if t.get("packing") and not t.get("max_length") and "max_seq_length" not in t:  # that one is named as renamed
        problems.append(("training.max_length", "packing needs a max_length: the length of a packed row"))
    if t.get("packing") and t.get("padding_free") is False:
        # Measured: TRL's collator then sends an all-ones attention_mask, and eager/sdpa attend across
        # the packed documents (logits differ from per-document ones by ~1.1 on the tiny model).
        problems.append(("training.padding_free", "packed rows without padding-free attention attend across "
                                                  "documents; remove `padding_free: false`"))
    if t.get("bf16") and t.get("fp16"):
        problems.append(("training.bf16", "bf16 and fp16 are both set; choose one"))
    return problems
