"""`smolalign plan`: what a recipe will train on, how it differs from the published SmolLM3 configuration
and from another variant, and what it will cost, before any GPU is booked. No model loads; offline.

    smolalign plan RECIPE [RECIPE ...] [--gpus N] [--gpu h100|h200|a100] [--against OTHER.yaml]
    make plan RECIPE=recipes/smollm3/<stage>.yaml

For each recipe (any stage; this module reads recipes generically and names no stage):
1. differences: the resolved recipe (schema defaults, `--set`, TRL's own field defaults of the pinned
   version for `training:`) against the published configuration of its stage (pipeline/planning/published/
   smollm3.yaml: values, source and commit) and against `--against`: every key that differs, whether it
   changes the run's identity (pipeline/core/runs.py identity_data decides) and a note for the known traps;
2. data: the stage's own section, from its module's `plan(recipe, planner)` (a `PlanSection`,
   pipeline/core/stages.py), printed by its `plan_text(data)`: what it trains on or generates, its
   problems, and for a training stage what an epoch holds; the `Planner` below lends it what the plan
   knows (resolved TRL settings, the tokenizer if it is here, the published sources' sizes);
3. cost: optimizer steps, tokens, GPU-hours and wall time on N GPUs, memory per GPU (pipeline/planning/costs.py),
   from what the stage said an epoch holds; a stage that trains on prompts (`trains_on: prompts`) also
   generates what it trains on: its generated tokens are costed at the generation throughput given.
Problems (the recipe cannot run as written) are listed; the CLI prints them one a line and exits 2.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline.core import schema, trl_fields
from pipeline.core.batch import GLOBAL_BATCH, Batch, BatchError, batch_for
from pipeline.core.checks import RENAMED_TRAINING_KEYS
from pipeline.core.inputs import classify_input
from pipeline.core.recipe import parse_yaml
from pipeline.core.redaction import redact
from pipeline.core.runs import identity_data, identity_hash
from pipeline.core.stages import PlanSection, recipe_class, stage_module
from pipeline.core.text import cell, table
from pipeline.planning import costs

PUBLISHED = Path(__file__).resolve().parent / "published" / "smollm3.yaml"
MISSING = "<not set>"


@lru_cache(maxsize=1)
def published() -> dict[str, Any]:
    return parse_yaml(PUBLISHED.read_text())


# ----------------------------------------------------------------------------------------------
# The resolved recipe and its differences
# ----------------------------------------------------------------------------------------------
def trl_defaults(stage: str) -> dict[str, Any]:
    """Field defaults of the TRL config that receives `training:` (SFTConfig / DPOConfig), as JSON values, from the
    table of TRL's fields (pipeline/core/trl_fields.py): planning imports no TRL."""
    return trl_fields.defaults(recipe_class(stage).trl_config)


DERIVED_ACCUMULATION = f"derived at launch from {GLOBAL_BATCH} and the GPU count"


def resolved(recipe) -> dict[str, Any]:
    """The recipe as it will run: every schema default, and TRL's defaults under whatever `training:` leaves out
    (the accumulation of a recipe that states its global batch is derived at launch: said so)."""
    data = recipe.model_dump(mode="json")
    if isinstance(data.get("training"), dict):
        data["training"] = dict(recipe.settings)
        if GLOBAL_BATCH in data["training"]:
            data["training"]["gradient_accumulation_steps"] = DERIVED_ACCUMULATION
    return data


def flatten(value: Any, path: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """{key path: value}. `training.X` values are leaves; a list of sources (dicts with a `path`) is keyed
    by each source's label, so adding or removing one source does not renumber the others."""
    out = {} if out is None else out
    if path == "peft":  # one row, full fine-tuning or LoRA with its settings
        out[path] = peft_label(value)
    elif isinstance(value, dict) and value and not path.startswith("training."):
        for k, v in value.items():
            flatten(v, f"{path}.{k}" if path else str(k), out)
    elif isinstance(value, list) and value and all(isinstance(v, dict) and "path" in v for v in value):
        seen: Counter = Counter()
        for v in value:
            label = source_label(v)
            seen[label] += 1
            flatten(v, f"{path}[{label}{'' if seen[label] == 1 else '#' + str(seen[label])}]", out)
    else:
        out[path] = value
    return out


def peft_label(peft: dict[str, Any] | None) -> str:
    """`peft:` in one cell: none, or LoRA with its settings."""
    if not peft:
        return "none (full fine-tuning)"
    targets = peft["target_modules"]
    targets = targets if isinstance(targets, str) else ", ".join(targets)
    return f"LoRA r={peft['r']} alpha={peft['lora_alpha']} dropout={peft['lora_dropout']} on {targets}"


def source_label(source: dict[str, Any]) -> str:
    """A source block's label, as every report names it (pipeline/core/schema.py)."""
    return schema.source_label(source["path"], source.get("split", "train"), source.get("name"))


def changes_identity(path: str) -> bool:
    """Whether a key is part of a run's identity: the rule of pipeline/core/runs.py (identity_data), asked
    about this one key."""
    keys = path.split("[")[0].split(".")
    data: Any = 1
    for key in reversed(keys):  # the key alone, as a recipe: {"training": {"logging_steps": 1}}
        data = {key: data}
    kept = identity_data(data)
    for key in keys:
        if not isinstance(kept, dict) or key not in kept:
            return False
        kept = kept[key]
    return True


def note_for(path: str) -> str:
    traps = published()["traps"]
    key = path.split("[")[0] if path.startswith("data.sources") else path
    if key in traps:
        return " ".join(traps[key].split())
    if not changes_identity(path):
        return "logging, tracking or naming only: does not change what the run computes"
    return ""


def against_differences(recipe, other) -> dict[str, Any]:
    """Every key whose resolved value differs between two recipes, and whether it changes the identity."""
    mine, theirs = flatten(resolved(recipe)), flatten(resolved(other))
    ident_mine = flatten(identity_data(recipe.model_dump(mode="json")))
    ident_theirs = flatten(identity_data(other.model_dump(mode="json")))
    rows = []
    for path in sorted(set(mine) | set(theirs)):
        a, b = mine.get(path, MISSING), theirs.get(path, MISSING)
        if _same(a, b):
            continue
        identity = ident_mine.get(path, MISSING) != ident_theirs.get(path, MISSING)
        rows.append({"key": path, "this": shown(path, a), "other": shown(path, b), "changes_identity": identity,
                     "note": note_for(path)})
    return {"other": getattr(other, "_source", None), "rows": rows,
            "identity_differs": identity_hash(recipe) != identity_hash(other)}


def shown(path: str, value: Any) -> Any:
    """A value as a row shows it: hidden when its key names a secret (hub_token, api_key, ...), whatever
    its length. Rows carry the key as a dotted path, which the CLI's redaction of the plan cannot see
    as a key, and a secret under 6 characters is not remembered to be cut out of text."""
    return redact(value, path.rsplit(".", 1)[-1])


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-12)
    return a == b


def published_differences(recipe, gpus: int) -> dict[str, Any] | None:
    """The recipe against the published configuration of its stage (None for stages it has none of)."""
    pub = published()["stages"].get(recipe.stage)
    if pub is None:
        return None
    ours = flatten(resolved(recipe))
    defaults = trl_defaults(recipe.stage)  # every published stage is a training stage
    rows, renamed_same = [], []
    batch, batch_problem = plan_batch(recipe, gpus)
    for path, entry in pub["keys"].items():
        if path == "training.gradient_accumulation_steps" and GLOBAL_BATCH in recipe.training:
            continue  # derived from the global batch, which the batch line and row compare
        theirs, published_value = entry["value"], entry["value"]
        if theirs is None and path.startswith("training."):
            theirs = defaults.get(path.removeprefix("training."))
            published_value = f"not set (TRL default: {theirs})"
        mine = ours.get(path, MISSING)
        if path.endswith(".revision") and mine is None:
            mine = "main"  # no revision is the Hub's default branch
        old_name = entry.get("published_as")
        renamed = old_name in RENAMED_TRAINING_KEYS
        note = entry.get("note") or note_for(path)
        if renamed:  # the one table of renamed keys (pipeline/core/checks.py) says what became of it
            note = f"published as `{old_name}`: {RENAMED_TRAINING_KEYS[old_name]}"
        if _same(mine, theirs):
            # Not a difference in what runs, so not a row (a row is a difference, with its identity
            # verdict); a renamed key still gets a line of its own, for whoever ports a config that
            # uses the old name.
            if renamed:
                renamed_same.append({"key": path, "published_as": old_name, "value": shown(path, mine),
                                     "note": note})
            continue
        rows.append({"key": path, "published": published_value, "ours": shown(path, mine),
                     "changes_identity": changes_identity(path),
                     "note": note.strip(), **({"published_as": old_name} if old_name else {})})
    ours_only = sorted(k for k in ours if k.startswith("training.") and k not in pub["keys"]
                       and k != f"training.{GLOBAL_BATCH}")  # the batch line compares it
    for path in ours_only:
        default = defaults.get(path.removeprefix("training."), MISSING)
        if path.removeprefix("training.") in recipe.training and not _same(ours[path], default):
            rows.append({"key": path, "published": f"not set (TRL default: {default})",
                         "ours": shown(path, ours[path]), "changes_identity": changes_identity(path),
                         "note": note_for(path)})
    rows += _source_differences(recipe, pub)
    if recipe.peft is not None:  # the published recipe trains every weight
        rows.append({"key": "peft", "published": peft_label(None), "ours": peft_label(recipe.peft.model_dump()),
                     "changes_identity": True, "note": note_for("peft")})
    rows.append(_global_batch_row(pub, gpus, batch, batch_problem))
    src = published()["source"]
    return {"file": pub["file"], "repository": src["repository"], "commit": src["commit"], "date": src["date"],
            "rows": [r for r in rows if r is not None], "renamed": renamed_same,
            "batch": {"published": published_batch(pub), "ours": batch.describe() if batch else batch_problem}}


def _source_differences(recipe, pub) -> list[dict[str, Any]]:
    def weight(s: dict[str, Any]):
        return s.get("fraction") if s.get("fraction") is not None else (f"{s['tokens']} tokens" if s.get("tokens")
                                                                          else 1.0)

    ours = {source_label(s): weight(s) for s in recipe.model_dump(mode="json")["data"]["sources"]}
    theirs = {source_label(s): s.get("weight", 1.0) for s in pub["sources"]}
    note = note_for("data.sources")
    rows = []
    for label in sorted(set(ours) | set(theirs)):
        a, b = ours.get(label, "absent"), theirs.get(label, "absent")
        if not _same(a, b):
            rows.append({"key": f"data.sources[{label}]", "published": f"weight {b}" if b != "absent" else b,
                         "ours": f"fraction {a}" if a != "absent" else a, "changes_identity": True, "note": note})
    return rows


def plan_batch(recipe, gpus: int) -> tuple[Batch | None, str | None]:
    """(the recipe's global batch on `gpus` GPUs, None) or (None, why that count cannot make it): what the
    training stage derives at launch (pipeline/core/batch.py)."""
    try:
        return batch_for(recipe.settings, gpus), None
    except BatchError as e:
        return None, str(e)


def published_batch(pub: dict[str, Any]) -> str:
    keys = pub["keys"]
    per_device = keys["training.per_device_train_batch_size"]["value"]
    accumulation = keys["training.gradient_accumulation_steps"]["value"]
    return f"{pub['global_batch']} = {pub['gpus']} GPUs x {per_device} per device x {accumulation} accumulation steps"


def _global_batch_row(pub, gpus: int, batch: Batch | None, problem: str | None) -> dict[str, Any] | None:
    if batch is not None and batch.global_batch == pub["global_batch"]:
        return None
    row = {"key": "global batch (GPUs x per-device x accumulation)",
           "published": f"{pub['global_batch']} ({pub['gpus']} GPUs)",
           "ours": f"{batch.global_batch} on {gpus} GPU(s)" if batch else f"cannot be made on {gpus} GPU(s)",
           "changes_identity": True, "note": note_for("training.gradient_accumulation_steps")}
    if batch is None:
        row["note"] = problem
    elif not batch.derived:
        row["note"] += (f"; to train with the published batch on any GPU count, state it: `{GLOBAL_BATCH}: "
                        f"{pub['global_batch']}` instead of gradient_accumulation_steps (the stage derives the "
                        f"accumulation at launch)")
    return row


# ----------------------------------------------------------------------------------------------
# The stage's own section, and what the plan lends it
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Planner:
    """What the plan lends a stage's `plan(recipe, planner)`: the job it plans for and what the plan knows
    of a recipe (a stage module imports nothing of planning/, which stands above it)."""

    gpus: int = 8
    gpu: str = "h100"
    vllm_tokens_per_s: float | None = None  # the generation throughput given (--vllm-tokens-per-s)

    @staticmethod
    def training(recipe):
        """The recipe's `training:` over the defaults of its TRL config: what the trainer will use."""
        return recipe.settings

    @staticmethod
    def tokenizer(recipe):
        """(tokenizer, None) when the recipe's tokenizer is on this machine, else (None, why). Never downloads."""
        return local_tokenizer(recipe)

    @staticmethod
    def sized_sources(recipe) -> tuple[list[tuple[Any, dict[str, Any]]], list[str]]:
        """([(source, its whole split's size: rows, tokens or tokens_chosen)], labels of the sources whose size
        is not known here): the sizes the published configuration records (the smoltalk2 dataset card)."""
        sizes = source_sizes()
        labels = [source_label(s.model_dump()) for s in recipe.data.sources]
        return ([(s, sizes[label]) for s, label in zip(recipe.data.sources, labels) if label in sizes],
                [label for label in labels if label not in sizes])


def source_sizes() -> dict[str, dict[str, Any]]:
    """Every published source with a known size (its whole split: rows, and tokens or tokens_chosen), by label."""
    return {source_label(s): s for stage in published()["stages"].values() for s in stage["sources"] if "rows" in s}


def stage_section(recipe, planner: Planner) -> PlanSection:
    """The stage's own part of the plan (its module's `plan`); a stage without one has none."""
    plan = getattr(stage_module(recipe.stage), "plan", None)
    return plan(recipe, planner) if plan else PlanSection()


def stage_text(plan: dict[str, Any]) -> list[str]:
    """The stage's own part of the plan as text (its module's `plan_text`), from plan.json's `data`."""
    text = getattr(stage_module(plan["stage"]), "plan_text", None)
    return text(plan["data"]) if text and plan["data"] else []


def local_tokenizer(recipe):
    """(tokenizer, None) when the recipe's tokenizer is on this machine, else (None, why). Never downloads."""
    from pipeline.core.models import cache_dir
    from pipeline.training.train import load_tokenizer

    ref = recipe.model.name_or_path
    kind = classify_input(ref)
    if kind == "embedded" and not (cache_dir() / "models" / ref.removeprefix("embedded:") / "config.json").is_file():
        return None, f"{ref} is not built yet: `smolalign prepare-model`"
    if kind == "local" and not Path(ref).expanduser().is_dir():
        return None, (f"{ref} is not here yet (the output of an earlier stage?); the mixture is found by the "
                      "model's tokenizer")
    try:
        return load_tokenizer(recipe, local_files_only=kind == "hub"), None
    except (OSError, ValueError) as e:
        return None, f"the tokenizer of {ref} is not available offline ({type(e).__name__})"


# ----------------------------------------------------------------------------------------------
# What it costs
# ----------------------------------------------------------------------------------------------
def shape_for(recipe) -> tuple[dict[str, Any], str]:
    """(architecture numbers, where they come from): the model's config.json on this machine, else the
    SmolLM3-3B shape, said to be an assumption."""
    from pipeline.core.models import cache_dir

    ref = recipe.model.name_or_path
    kind = classify_input(ref)
    directory = None
    if kind == "embedded":
        directory = cache_dir() / "models" / ref.removeprefix("embedded:")
    elif kind == "local":
        directory = Path(ref).expanduser()
    else:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(ref, "config.json", revision=recipe.model.revision)
        directory = Path(found).parent if isinstance(found, str) else None
    shape = costs.model_shape(directory) if directory else None
    if shape is not None:
        return shape, f"{ref} (config.json)"
    return costs.SMOLLM3_3B, f"assumed SmolLM3-3B: {ref} is not on this machine"


def cost_section(recipe, section: PlanSection, *, gpus: int, gpu: str, sharding: tuple[str, int],
                 measured: dict[str, Any] | None, vllm_tokens_per_s: float | None = None
                 ) -> tuple[dict[str, Any], list[str]]:
    """Steps, tokens, GPU-hours and memory per GPU, from what the stage said an epoch holds (`section`)."""
    t = recipe.settings
    shape, shape_from = shape_for(recipe)
    max_length = section.max_length or t.get("max_length")  # a stage with no max_length field says it in its section
    if not max_length:
        return {"gpus": gpus, "gpu": gpu}, ["training.max_length: null leaves the length of a row open; the plan "
                                            "costs steps and memory at a length: set one"]
    batch, batch_problem = plan_batch(recipe, gpus)
    work = section.work or {"work_from": "unknown: the stage's module has no `plan` saying what an epoch holds"}
    checkpointing = bool(t.activation_checkpointing)
    out: dict[str, Any] = {"gpus": gpus, "gpu": gpu, "model": shape_from, "parameters": costs.parameters(shape),
                           "global_batch": batch.global_batch if batch else None,
                           "batch": batch.describe() if batch else batch_problem, "max_length": max_length, **work}
    trainable = None
    if recipe.peft is not None:
        trainable, not_counted = costs.lora_parameters(shape, recipe.peft.r, recipe.peft.target_modules)
        out["lora"] = {"trainable_parameters": trainable, "share": trainable / out["parameters"],
                       "targets_not_counted": not_counted}
    rows = work.get("rows_per_epoch")
    max_steps = int(t.max_steps)
    if batch is None:
        pass  # no step count: this GPU count cannot run the recipe (a problem, below)
    elif max_steps > 0:
        out["steps"] = max_steps
        if rows:
            out["epochs"] = max_steps * out["global_batch"] / rows
    elif rows:
        per_epoch = math.ceil(math.ceil(rows / (gpus * batch.per_device)) / batch.accumulation)
        out["steps"] = math.ceil(float(t["num_train_epochs"]) * per_epoch)
        out["epochs"] = float(t["num_train_epochs"])
    if "epochs" in out and work.get("tokens_per_epoch"):
        out["tokens"] = work["tokens_per_epoch"] * out["epochs"]
        speed = costs.tokens_per_second(shape, gpu, work["span"], measured=measured, checkpointing=checkpointing,
                                        liger=bool(t.use_liger_kernel),
                                        attn_implementation=recipe.model.attn_implementation)
        if trainable is not None:  # measured throughput is full training's; LoRA skips the weight gradients
            factor = costs.lora_speedup(shape, work["span"], trainable, checkpointing)
            out["lora"]["speedup"] = factor
            speed = {**speed, "tokens_per_s": speed["tokens_per_s"] * factor, "estimate": True,
                     "source": f"{speed['source']}; x{factor:.2f} for LoRA (no gradients of the frozen weights)"}
        out["throughput"] = speed
        out["gpu_hours"] = costs.gpu_hours(out["tokens"] * (1 + section.reference_forward), speed["tokens_per_s"])
        out["wall_hours"] = out["gpu_hours"] / gpus
    if recipe.trains_on == "prompts":  # it generates what it trains on: those tokens take GPU time too
        out["generating"] = generation_cost(section, out.get("epochs"), vllm_tokens_per_s)
        if out["generating"]["gpu_hours"] is not None and "gpu_hours" in out:
            out["gpu_hours"] += out["generating"]["gpu_hours"]
            out["wall_hours"] = out["gpu_hours"] / gpus
    per_device = int(t["per_device_train_batch_size"])
    memory = costs.memory_per_gpu(
        shape, dtype=recipe.model.dtype, sharding=sharding, gpus=gpus, seq_length=max_length,
        batch=per_device * section.sequences_per_row, checkpointing=checkpointing,
        liger=bool(t.use_liger_kernel), attn_implementation=recipe.model.attn_implementation,
        capacity_gib=costs.GPUS[gpu]["memory_gib"], trainable=trainable)
    if section.reference_copy:
        reference = memory["weights_gib"]  # a frozen copy of the weights, sharded like them
        memory["reference_model_gib"] = reference
        for key in ("total_gib", "total_checkpointed_gib", "total_full_gib"):
            memory[key] += reference
        memory["fits"] = memory["total_gib"] <= 0.9 * memory["capacity_gib"]
    if section.reserved is not None:  # an engine the stage runs beside training takes its share of every GPU
        share, what = section.reserved
        memory["reserved_gib"], memory["reserved_for"] = share * memory["capacity_gib"], what
        for key in ("total_gib", "total_checkpointed_gib", "total_full_gib"):
            memory[key] += memory["reserved_gib"]
        memory["fits"] = memory["total_gib"] <= 0.9 * memory["capacity_gib"]
    memory["sharding"] = f"zero{sharding[1]}" if sharding[0] == "zero" else sharding[0]
    out["memory"] = memory
    problems = [batch_problem] if batch_problem else []
    if not memory["fits"]:
        problems.append(f"memory: about {memory['total_gib']:.1f} GiB per GPU at max_length {max_length} "
                        f"({memory['sharding']}, {gpus} GPUs) does not fit a {costs.GPUS[gpu]['name']} "
                        f"({memory['capacity_gib']} GiB, 90% usable)" + _memory_hint(t, memory))
    return out, problems


def generation_cost(section: PlanSection, epochs: float | None, tokens_per_s: float | None) -> dict[str, Any]:
    """What a stage that generates its own completions generates over the run (the tokens it said an epoch
    generates, times the epochs), and the GPU-hours that takes at the throughput given."""
    per_epoch = section.generated_tokens_per_epoch
    tokens = per_epoch * epochs if per_epoch is not None and epochs is not None else None
    hours = costs.gpu_hours(tokens, tokens_per_s) if tokens is not None and tokens_per_s else None
    return {"tokens": tokens, "tokens_per_s": tokens_per_s, "gpu_hours": hours}


def _memory_hint(t, memory: dict[str, Any]) -> str:
    if not t.activation_checkpointing and memory["total_checkpointed_gib"] <= 0.9 * memory["capacity_gib"]:
        return f"; with activation_checkpointing: true it would be {memory['total_checkpointed_gib']:.1f} GiB"
    return "; shard more (zero3 / fsdp2, more GPUs), lower max_length, or turn on Liger"


# ----------------------------------------------------------------------------------------------
# The plan
# ----------------------------------------------------------------------------------------------
def plan_recipe(recipe, *, gpus: int = 8, gpu: str = "h100", against=None, sharding: tuple[str, int] = ("zero", 3),
                measured: dict[str, Any] | None = None, vllm_tokens_per_s: float | None = None) -> dict[str, Any]:
    """Everything `smolalign plan` shows for one loaded recipe, as JSON-ready data; `problems` lists what
    stops it from running as written."""
    plan: dict[str, Any] = {"recipe": getattr(recipe, "_source", None), "stage": recipe.stage, "name": recipe.name,
                            "identity_sha256": identity_hash(recipe), "resolved": resolved(recipe), "problems": []}
    plan["published"] = published_differences(recipe, gpus)
    if against is not None:
        plan["against"] = against_differences(recipe, against)
    planner = Planner(gpus=gpus, gpu=gpu, vllm_tokens_per_s=vllm_tokens_per_s)
    section = stage_section(recipe, planner)
    plan["data"] = section.data
    plan["problems"] += section.problems
    if "training" in plan["resolved"]:
        plan["cost"], problems = cost_section(recipe, section, gpus=gpus, gpu=gpu, sharding=sharding,
                                              measured=measured, vllm_tokens_per_s=vllm_tokens_per_s)
        plan["problems"] += problems
    return plan


# ----------------------------------------------------------------------------------------------
# The plan as text
# ----------------------------------------------------------------------------------------------
def format_plan(plan: dict[str, Any]) -> str:
    lines = [f"== {plan['recipe']} ({plan['stage']}, run `{plan['name']}`, identity {plan['identity_sha256'][:12]})"]
    if plan.get("published"):
        pub = plan["published"]
        lines.append(f"\n-- differences from the published SmolLM3 config: {pub['repository']} {pub['file']} "
                     f"@ {pub['commit'][:10]} ({pub['date']})")
        lines += table(["key", "published", "ours", "identity"],
                       [[r["key"], r["published"], r["ours"], _yes(r["changes_identity"])] for r in pub["rows"]],
                       notes=[r["note"] for r in pub["rows"]])
        lines.append(f"  global batch: published {pub['batch']['published']}; here {pub['batch']['ours']}")
        if pub["renamed"]:
            lines.append("  renamed, same value (not a difference): " + ", ".join(
                f"{r['published_as']} -> {r['key']} ({cell(r['value'])})" for r in pub["renamed"]))
    if plan.get("against"):
        against = plan["against"]
        lines.append(f"\n-- differences from {against['other']} "
                     f"({'a different run' if against['identity_differs'] else 'the same run identity'})")
        lines += table(["key", "this", "other", "identity"],
                       [[r["key"], r["this"], r["other"], _yes(r["changes_identity"])] for r in against["rows"]],
                       notes=[r["note"] for r in against["rows"]]) if against["rows"] else ["  (no difference)"]
    if not plan.get("published") and not plan.get("against"):
        lines.append("  (no published configuration of this stage to compare with; --against compares two recipes)")
    lines += stage_text(plan)
    if plan.get("cost"):
        lines += _format_cost(plan["cost"])
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "changes" if flag else "no"


def _format_cost(cost: dict[str, Any]) -> list[str]:
    lines = [f"\n-- what it costs on {cost['gpus']} x {costs.GPUS[cost['gpu']]['name']} "
             f"(model {cost['model']}, {cost['parameters'] / 1e9:.2f}B parameters)"]
    lines.append(f"  {cost['batch']}; rows of up to {cost['max_length']:,} tokens; work from {cost['work_from']}")
    if "steps" in cost:
        epochs = f" ({cost['epochs']:g} epochs)" if "epochs" in cost else ""
        lines.append(f"  optimizer steps {cost['steps']:,}{epochs}")
    if "throughput" in cost:
        speed = cost["throughput"]
        lines.append(f"  tokens {cost['tokens']:,.0f}; {speed['tokens_per_s']:,.0f} tokens/s per GPU "
                     f"({'estimate' if speed['estimate'] else 'measured'}: {speed['source']})")
    if "generating" in cost:
        lines.append(_generation_line(cost["generating"]))
    if "gpu_hours" in cost:
        both = " (training and generation)" if (cost.get("generating") or {}).get("gpu_hours") is not None else ""
        lines.append(f"  {cost['gpu_hours']:,.1f} GPU-hours{both}, {cost['wall_hours']:,.1f} h wall on "
                     f"{cost['gpus']} GPUs")
    if cost.get("lora"):
        lora = cost["lora"]
        lines.append(f"  LoRA: {lora['trainable_parameters']:,} trainable parameters ({lora['share']:.2%}); gradients "
                     "and optimizer states for those alone"
                     + (f", compute x{lora['speedup']:.2f} faster a token (estimate)" if "speedup" in lora else "")
                     + (f"; not counted: {', '.join(lora['targets_not_counted'])}" if lora["targets_not_counted"]
                        else ""))
    m = cost["memory"]
    lines.append(f"  memory per GPU ({m['sharding']}): weights {m['weights_gib']:.1f} + gradients "
                 f"{m['gradients_gib']:.1f} + optimizer {m['optimizer_gib']:.1f} GiB"
                 + (f" + reference model {m['reference_model_gib']:.1f}" if "reference_model_gib" in m else "")
                 + (f" + {m['reserved_for']} {m['reserved_gib']:.1f}" if "reserved_gib" in m else "")
                 + f"; activations {m['activations_checkpointed_gib']:.1f} GiB with checkpointing, "
                 f"{m['activations_full_gib']:.1f} without (logits {m['logits_gib']:.1f})")
    verdict = "fits" if m["fits"] else "DOES NOT FIT"
    lines.append(f"  total {m['total_gib']:.1f} GiB of {m['capacity_gib']} "
                 f"({'with' if m['checkpointing'] else 'without'} checkpointing, as the recipe says): {verdict}; "
                 f"{m['total_checkpointed_gib']:.1f} with / {m['total_full_gib']:.1f} without checkpointing")
    return lines


def _generation_line(generation: dict[str, Any]) -> str:
    if generation["tokens"] is None:
        return ("  generation: not known (the stage's plan says no generated tokens an epoch, or the epochs are "
                "not known)")
    line = f"  generates {generation['tokens']:,.0f} tokens"
    if generation["gpu_hours"] is None:
        return line + "; GPU-hours: give the generation throughput you measured (--vllm-tokens-per-s)"
    return line + f" at {generation['tokens_per_s']:,.0f} tokens/s: {generation['gpu_hours']:,.1f} GPU-hours"
