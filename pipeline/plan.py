"""`smolalign plan`: what a recipe will train on, how it differs from the published SmolLM3 configuration
and from another variant, and what it will cost, before any GPU is booked. No model loads; offline.

    smolalign plan RECIPE [RECIPE ...] [--gpus N] [--gpu h100|h200|a100] [--against OTHER.yaml]
    make plan RECIPE=recipes/smollm3/sft.yaml

For each recipe (any stage; the plan reads recipes generically: stage, `training:`, data sources):
1. differences: the resolved recipe (schema defaults, `--set`, TRL's own field defaults of the pinned
   version for `training:`) against the published configuration of its stage (pipeline/published/
   smollm3.yaml: values, source and commit) and against `--against`: every key that differs, whether it
   changes the run's identity (pipeline/runs.py identity_data decides) and a note for the known traps;
2. data: the mixture `prepare` built for this recipe and tokenizer (pipeline/mixture.py's cache entry):
   tokens per source and mode, trained tokens, pack fill, rows over max_length, quarantined rows and their
   top reasons. A source that trains nothing or next to nothing is a problem. APO: pairs per source and
   mode, prompt and answer lengths against max_length. Synth: prompts x modes x models x tokens;
3. cost: optimizer steps, tokens, GPU-hours and wall time on N GPUs, memory per GPU (pipeline/costs.py).
Problems (the recipe cannot run as written) are listed; the CLI prints them one a line and exits 2.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from collections import Counter
from functools import lru_cache
from pathlib import Path
from typing import Any

from pipeline import costs, sources, trl_fields
from pipeline.checks import RENAMED_TRAINING_KEYS
from pipeline.inputs import classify_input
from pipeline.recipe import parse_yaml
from pipeline.redaction import redact
from pipeline.runs import identity_data, identity_hash
from pipeline.stages import recipe_class

PUBLISHED = Path(__file__).resolve().parent / "published" / "smollm3.yaml"
# A source whose share of the mixture's trained tokens is under this trains next to nothing: an error.
NEAR_ZERO_SHARE = 0.001
MISSING = "<not set>"


@lru_cache(maxsize=1)
def published() -> dict[str, Any]:
    return parse_yaml(PUBLISHED.read_text())


# ----------------------------------------------------------------------------------------------
# The resolved recipe and its differences
# ----------------------------------------------------------------------------------------------
def trl_defaults(stage: str) -> dict[str, Any]:
    """Field defaults of the TRL config that receives `training:` (SFTConfig / DPOConfig), as JSON values, from the
    table of TRL's fields (pipeline/trl_fields.py)."""
    return trl_fields.defaults(recipe_class(stage).trl_config)


def resolved(recipe) -> dict[str, Any]:
    """The recipe as it will run: every schema default, and TRL's defaults under whatever `training:` leaves out."""
    data = recipe.model_dump(mode="json")
    if isinstance(data.get("training"), dict):
        data["training"] = {**trl_defaults(recipe.stage), **data["training"]}
    return data


def flatten(value: Any, path: str = "", out: dict[str, Any] | None = None) -> dict[str, Any]:
    """{key path: value}. `training.X` values are leaves; a list of sources (dicts with a `path`) is keyed
    by each source's label, so adding or removing one source does not renumber the others."""
    out = {} if out is None else out
    if isinstance(value, dict) and value and not path.startswith("training."):
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


def source_label(source: dict[str, Any]) -> str:
    """A source block's label, as every report names it (pipeline/sources.py)."""
    return sources.source_label(source["path"], source.get("split", "train"), source.get("name"))


def changes_identity(path: str) -> bool:
    """Whether a key is part of a run's identity: the rule of pipeline/runs.py (identity_data), asked
    about this one key."""
    top, _, rest = path.split("[")[0].partition(".")
    if top in ("training", "backend") and rest:  # blocks whose keys are judged one by one
        return bool(identity_data({top: {rest.split(".")[0]: 1}})[top])
    return top in identity_data({top: 1})


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
    for path, entry in pub["keys"].items():
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
        if renamed:  # the one table of renamed keys (pipeline/checks.py) says what became of it
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
    for path in sorted(k for k in ours if k.startswith("training.") and k not in pub["keys"]):
        default = defaults.get(path.removeprefix("training."), MISSING)
        if path.removeprefix("training.") in recipe.training and not _same(ours[path], default):
            rows.append({"key": path, "published": f"not set (TRL default: {default})",
                         "ours": shown(path, ours[path]), "changes_identity": changes_identity(path),
                         "note": note_for(path)})
    rows += _source_differences(recipe, pub)
    rows.append(_global_batch_row(recipe, pub, gpus))
    src = published()["source"]
    return {"file": pub["file"], "repository": src["repository"], "commit": src["commit"], "date": src["date"],
            "rows": [r for r in rows if r is not None], "renamed": renamed_same}


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


def global_batch(training: dict[str, Any], gpus: int) -> int:
    """GPUs x per-device batch x gradient accumulation (TRL's defaults where `training` leaves them out)."""
    per_device = int(training.get("per_device_train_batch_size", 8))
    return gpus * per_device * int(training.get("gradient_accumulation_steps", 1))


def _global_batch_row(recipe, pub, gpus: int) -> dict[str, Any] | None:
    t = {**trl_defaults(recipe.stage), **recipe.training}
    ours = global_batch(t, gpus)
    if ours == pub["global_batch"]:
        return None
    per_device = int(t.get("per_device_train_batch_size", 8))
    accumulation = pub["global_batch"] / (gpus * per_device)
    fix = (f"; to match it on {gpus} GPU(s): gradient_accumulation_steps={accumulation:g}"
           if accumulation == int(accumulation) and accumulation >= 1 else "")
    return {"key": "global batch (GPUs x per-device x accumulation)",
            "published": f"{pub['global_batch']} ({pub['gpus']} GPUs)", "ours": f"{ours} on {gpus} GPU(s)",
            "changes_identity": True, "note": note_for("training.gradient_accumulation_steps") + fix}


# ----------------------------------------------------------------------------------------------
# What it trains on
# ----------------------------------------------------------------------------------------------
def local_tokenizer(recipe):
    """(tokenizer, None) when the recipe's tokenizer is on this machine, else (None, why). Never downloads."""
    from pipeline.models import cache_dir
    from pipeline.train import load_tokenizer

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


def mixture_section(recipe) -> tuple[dict[str, Any], list[str]]:
    """The midtrain/SFT mixture `prepare` built for this recipe: its report, read from the cache."""
    from pipeline.mixture import mixture_fingerprint
    from pipeline.models import cache_dir

    how = f"build it with `make prepare RECIPE={recipe._source}` (the same cache entry the training stage reads)"
    missing = [s.path for s in recipe.data.sources
               if classify_input(s.path) == "local" and not Path(s.path).expanduser().exists()]
    if missing:  # the cache entry is keyed by the files' content
        return {"status": "unknown", "why": f"not on this machine yet: {', '.join(missing)}", "how": how}, []
    tokenizer, why = local_tokenizer(recipe)
    if tokenizer is None:
        return {"status": "unknown", "why": why, "how": how}, []
    fingerprint = mixture_fingerprint(recipe, tokenizer, tokenizer.chat_template or "")
    cache = cache_dir() / "mixtures" / fingerprint
    if not (cache / "report.json").is_file():
        return {"status": "not built", "fingerprint": fingerprint, "why": "the mixture cache has no entry for this "
                "recipe and tokenizer", "how": how}, []
    report = json.loads((cache / "report.json").read_text())
    reasons = top_quarantine_reasons(cache / "quarantine.jsonl")
    total_trained = sum(trained_tokens(s) for s in report["sources"])
    for i, s in enumerate(report["sources"]):
        s["label"] = source_label(recipe.data.sources[i].model_dump())
        s["trained_share_of_own_tokens"] = trained_tokens(s) / s["tokens"] if s["tokens"] else 0.0
        s["share_of_trained_tokens"] = trained_tokens(s) / total_trained if total_trained else 0.0
        s["top_quarantine_reasons"] = reasons.get(i, [])
    section = {"status": "built", "cache": str(cache), **report}
    return section, trained_problems(report)


def trained_tokens(source: dict[str, Any]) -> int:
    """A source's trained tokens that training sees: those within max_length (reports of older caches
    only have the count before the cut)."""
    return source.get("trained_tokens_kept", source["trained_tokens"])


def trained_problems(report: dict[str, Any]) -> list[str]:
    """A source that trains no token, or under NEAR_ZERO_SHARE of the mixture's trained tokens."""
    total = sum(trained_tokens(s) for s in report["sources"])
    problems = []
    for i, s in enumerate(report["sources"]):
        label, kept = s.get("label") or s["source"], trained_tokens(s)
        if kept == 0 and s["trained_tokens"]:
            problems.append(f"data.sources.{i} ({label}) trains nothing within max_length {report['max_length']}: "
                            f"its {s['trained_tokens']} trained tokens lie past the cut "
                            f"({s.get('rows_over_max_length')} of its rows are longer); raise max_length, shorten "
                            "its rows or remove the source")
        elif kept == 0:
            problems.append(f"data.sources.{i} ({label}) trains nothing: 0 trained tokens from {s['rows']} rows "
                            f"({s['quarantined']} quarantined); fix its rows or remove the source")
        elif total and kept / total < NEAR_ZERO_SHARE:
            problems.append(f"data.sources.{i} ({label}) trains next to nothing: {kept} trained "
                            f"tokens, {kept / total:.3%} of the mixture's "
                            f"(under {NEAR_ZERO_SHARE:.1%}); "
                            "raise its fraction or tokens, or remove it")
    return problems


def top_quarantine_reasons(path: Path, top: int = 3) -> dict[int, list[tuple[str, int]]]:
    """Per source index, its most common quarantine reasons (numbers in a reason read as N, so that
    'message 3 ...' and 'message 7 ...' count together). Read a line at a time."""
    if not path.is_file():
        return {}
    counts: dict[int, Counter] = {}
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            entry = json.loads(line)
            counts.setdefault(entry["source_index"], Counter())[re.sub(r"\d+", "N", entry["reason"])] += 1
    return {i: c.most_common(top) for i, c in counts.items()}


def pairs_section(recipe) -> tuple[dict[str, Any], list[str]]:
    """APO: pairs per source and mode (the APO stage's own budgets and checks), and token lengths of
    prompts and answers against max_length."""
    from pipeline.data import preference_rows
    from pipeline.errors import UserError

    how = "the pairs are read by the APO stage itself (no prepare step); they must be on this machine"
    remote = [s.path for s in recipe.data.sources if classify_input(s.path) == "hub"]
    if remote:
        return {"status": "unknown", "why": f"Hub datasets are not read offline: {', '.join(remote)}", "how": how}, []
    missing = [s.path for s in recipe.data.sources if not Path(s.path).expanduser().exists()]
    if missing:
        return {"status": "unknown", "why": f"not on this machine yet: {', '.join(missing)}", "how": how}, []
    tokenizer, why = local_tokenizer(recipe)
    if tokenizer is None:
        return {"status": "unknown", "why": why, "how": how}, []
    with tempfile.TemporaryDirectory() as tmp:
        try:
            rows, report = preference_rows(recipe, Path(tmp) / "quarantine.jsonl")
        except UserError as e:
            return {"status": "unusable"}, [str(e)]
    by = Counter((r["source"], "think" if r["thinking"] else "no_think") for r in rows)
    for i, s in enumerate(report["sources"]):
        s["label"] = source_label(recipe.data.sources[i].model_dump())
        s["modes"] = {mode: by[(i, mode)] for mode in ("think", "no_think") if by[(i, mode)]}
    max_length = recipe.training.get("max_length") or trl_defaults(recipe.stage).get("max_length")
    lengths = pair_lengths(rows, tokenizer)
    report["lengths"] = {k: percentiles(v) for k, v in lengths.items()}
    report["max_length"] = max_length
    report["pairs_over_max_length"] = sum(max(c, r) > max_length for c, r in zip(lengths["prompt_chosen"],
                                                                                  lengths["prompt_rejected"]))
    report["tokens"] = sum(lengths["prompt_chosen"]) + sum(lengths["prompt_rejected"])
    return {"status": "read", **report}, []


def pair_lengths(rows: list[dict[str, Any]], tokenizer) -> dict[str, list[int]]:
    """Tokens of each pair's prompt (with the generation prompt), chosen and rejected answers, as rendered."""
    out: dict[str, list[int]] = {k: [] for k in ("prompt", "chosen", "rejected", "prompt_chosen", "prompt_rejected")}
    for r in rows:
        kwargs = r["chat_template_kwargs"]
        prompt = len(tokenizer.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=True,
                                                   return_dict=True, **kwargs)["input_ids"])
        out["prompt"].append(prompt)
        for key in ("chosen", "rejected"):
            full = len(tokenizer.apply_chat_template(r["prompt"] + r[key], tokenize=True, return_dict=True,
                                                     **kwargs)["input_ids"])
            out[key].append(full - prompt)
            out[f"prompt_{key}"].append(full)
    return out


def percentiles(values: list[int]) -> dict[str, float]:
    import numpy as np

    if not values:
        return {}
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": float(p50), "p90": float(p90), "p99": float(p99), "max": int(max(values))}


def synth_section(recipe, vllm_tokens_per_s: float | None) -> dict[str, Any]:
    """Synth: prompts x modes x models x max_new_tokens (an upper bound on generated tokens), and GPU-hours
    at a stated vLLM throughput. Read from the recipe generically (prompts, modes, weak, sampling)."""
    data = recipe.model_dump(mode="json")
    prompts, unknown = 0, []
    for s in data["prompts"]["sources"]:
        n = count_rows(s["path"])
        if n is None:
            unknown.append(s["path"])
            continue
        prompts += int(n * s["fraction"]) if s.get("fraction") else n
    if unknown and not prompts:
        prompts = None  # not one source could be counted here
    elif data.get("max_prompts"):
        prompts = min(prompts, data["max_prompts"])
    models = 2 if data.get("weak") else 1
    generations = prompts * len(data["modes"]) * models if prompts is not None else None
    tokens = generations * data["sampling"]["max_new_tokens"] if generations is not None else None
    out = {"prompts": prompts, "modes": data["modes"], "models": models, "generations": generations,
           "max_new_tokens": data["sampling"]["max_new_tokens"], "generated_tokens_at_most": tokens,
           "prompt_sources_not_counted": unknown}
    if vllm_tokens_per_s and tokens is not None:
        out["vllm_tokens_per_s"] = vllm_tokens_per_s
        out["gpu_hours_at_most"] = tokens / vllm_tokens_per_s / 3600
    return out


def count_rows(path: str) -> int | None:
    """Rows of a local .jsonl (non-blank lines, read a line at a time) or .json list; None otherwise."""
    p = Path(path).expanduser()
    if classify_input(path) != "local" or not p.is_file():
        return None
    if p.suffix == ".jsonl":
        with open(p, encoding="utf-8", errors="replace") as fh:
            return sum(1 for line in fh if line.strip())
    if p.suffix == ".json":
        data = json.loads(p.read_text())
        return len(data) if isinstance(data, list) else 1
    return None


# ----------------------------------------------------------------------------------------------
# What it costs
# ----------------------------------------------------------------------------------------------
def shape_for(recipe) -> tuple[dict[str, Any], str]:
    """(architecture numbers, where they come from): the model's config.json on this machine, else the
    SmolLM3-3B shape, said to be an assumption."""
    from pipeline.models import cache_dir

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


def cost_section(recipe, data: dict[str, Any], *, gpus: int, gpu: str, sharding: tuple[str, int],
                 measured: dict[str, Any] | None) -> tuple[dict[str, Any], list[str]]:
    t = {**trl_defaults(recipe.stage), **recipe.training}
    shape, shape_from = shape_for(recipe)
    max_length = int(t.get("max_length") or 1024)
    per_device, accumulation = int(t["per_device_train_batch_size"]), int(t["gradient_accumulation_steps"])
    work = _work(recipe, data, max_length)
    out: dict[str, Any] = {"gpus": gpus, "gpu": gpu, "model": shape_from, "parameters": costs.parameters(shape),
                           "global_batch": global_batch(t, gpus), "max_length": max_length, **work}
    rows = work.get("rows_per_epoch")
    max_steps = int(t.get("max_steps") or -1)
    if max_steps > 0:
        out["steps"] = max_steps
        if rows:
            out["epochs"] = max_steps * out["global_batch"] / rows
    elif rows:
        per_epoch = math.ceil(math.ceil(rows / (gpus * per_device)) / accumulation)
        out["steps"] = math.ceil(float(t["num_train_epochs"]) * per_epoch)
        out["epochs"] = float(t["num_train_epochs"])
    if "epochs" in out and work.get("tokens_per_epoch"):
        # the APO reference model: one more forward per token (a third of a training step's FLOPs)
        reference = 1 / 3 if recipe.trains_on == "pairs" else 0
        out["tokens"] = work["tokens_per_epoch"] * out["epochs"]
        speed = costs.tokens_per_second(shape, gpu, work["span"], measured=measured,
                                        checkpointing=bool(t.get("activation_checkpointing")),
                                        liger=bool(t.get("use_liger_kernel")),
                                        attn_implementation=recipe.model.attn_implementation)
        out["throughput"] = speed
        out["gpu_hours"] = costs.gpu_hours(out["tokens"] * (1 + reference), speed["tokens_per_s"])
        out["wall_hours"] = out["gpu_hours"] / gpus
    batch = per_device * (2 if recipe.trains_on == "pairs" else 1)  # DPO runs chosen and rejected together
    memory = costs.memory_per_gpu(
        shape, dtype=recipe.model.dtype, sharding=sharding, gpus=gpus, seq_length=max_length, batch=batch,
        checkpointing=bool(t.get("activation_checkpointing")), liger=bool(t.get("use_liger_kernel")),
        attn_implementation=recipe.model.attn_implementation, capacity_gib=costs.GPUS[gpu]["memory_gib"])
    if recipe.trains_on == "pairs" and recipe.ref_model is None and not t.get("precompute_ref_log_probs"):
        reference = memory["weights_gib"]  # a frozen copy of the weights, sharded like them
        memory["reference_model_gib"] = reference
        for key in ("total_gib", "total_checkpointed_gib", "total_full_gib"):
            memory[key] += reference
        memory["fits"] = memory["total_gib"] <= 0.9 * memory["capacity_gib"]
    memory["sharding"] = f"zero{sharding[1]}" if sharding[0] == "zero" else sharding[0]
    out["memory"] = memory
    problems = []
    if not memory["fits"]:
        problems.append(f"memory: about {memory['total_gib']:.1f} GiB per GPU at max_length {max_length} "
                        f"({memory['sharding']}, {gpus} GPUs) does not fit a {costs.GPUS[gpu]['name']} "
                        f"({memory['capacity_gib']} GiB, 90% usable)" + _memory_hint(t, memory))
    return out, problems


def _memory_hint(t: dict[str, Any], memory: dict[str, Any]) -> str:
    if not t.get("activation_checkpointing") and memory["total_checkpointed_gib"] <= 0.9 * memory["capacity_gib"]:
        return f"; with activation_checkpointing: true it would be {memory['total_checkpointed_gib']:.1f} GiB"
    return "; shard more (zero3 / fsdp2, more GPUs), lower max_length, or turn on Liger"


def _published_mixture(recipe) -> bool:
    """Whether the recipe's sources and weights are the published ones (its token count then applies)."""
    return not _source_differences(recipe, published()["stages"][recipe.stage])


def _work(recipe, data: dict[str, Any], max_length: int) -> dict[str, Any]:
    """Rows and tokens an epoch holds, from the built mixture, or from the published token count as an estimate."""
    if data.get("status") == "built":
        packing = data.get("packing")
        if packing:
            return {"rows_per_epoch": packing["packed_rows"], "tokens_per_epoch": packing["tokens"],
                    "span": packing["tokens"] / max(packing["documents"], 1), "work_from": "the built mixture"}
        tokens = sum(min(s["tokens"], max_length * s["rows"]) for s in data["sources"])
        return {"rows_per_epoch": data["rows"], "tokens_per_epoch": tokens,
                "span": tokens / max(data["rows"], 1), "work_from": "the built mixture"}
    if data.get("status") == "read":  # APO pairs
        return {"rows_per_epoch": data["rows"], "tokens_per_epoch": data["tokens"],
                "span": data["tokens"] / max(2 * data["rows"], 1), "work_from": "the pairs"}
    pub = published()["stages"].get(recipe.stage, {}).get("tokens_per_epoch")
    if pub and recipe.trains_on == "rows" and _published_mixture(recipe):
        return {"rows_per_epoch": math.ceil(pub["value"] / max_length), "tokens_per_epoch": pub["value"],
                "span": max_length, "work_from": f"estimate: the published token count ({pub['from']}), full "
                "rows of max_length, attention over whole rows (an upper bound); `make prepare` gives this mixture's"}
    return {"work_from": "unknown until the data is built or read"}


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
    data, problems = {}, []
    if recipe.trains_on == "rows":  # token rows, built and packed by pipeline/mixture.py
        data, problems = mixture_section(recipe)
    elif recipe.trains_on == "pairs":  # preference pairs, read by the stage itself
        data, problems = pairs_section(recipe)
    elif hasattr(recipe, "prompts") and hasattr(recipe, "sampling"):  # a generation recipe (synth)
        data = synth_section(recipe, vllm_tokens_per_s)
    plan["data"] = data
    plan["problems"] += problems
    if "training" in plan["resolved"]:
        plan["cost"], problems = cost_section(recipe, data, gpus=gpus, gpu=gpu, sharding=sharding, measured=measured)
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
        lines += _table(["key", "published", "ours", "identity"],
                        [[r["key"], r["published"], r["ours"], _yes(r["changes_identity"])] for r in pub["rows"]],
                        notes=[r["note"] for r in pub["rows"]])
        if pub["renamed"]:
            lines.append("  renamed, same value (not a difference): " + ", ".join(
                f"{r['published_as']} -> {r['key']} ({_cell(r['value'])})" for r in pub["renamed"]))
    if plan.get("against"):
        against = plan["against"]
        lines.append(f"\n-- differences from {against['other']} "
                     f"({'a different run' if against['identity_differs'] else 'the same run identity'})")
        lines += _table(["key", "this", "other", "identity"],
                        [[r["key"], r["this"], r["other"], _yes(r["changes_identity"])] for r in against["rows"]],
                        notes=[r["note"] for r in against["rows"]]) if against["rows"] else ["  (no difference)"]
    if not plan.get("published") and not plan.get("against"):
        lines.append("  (no published configuration of this stage to compare with; --against compares two recipes)")
    lines += _format_data(plan["data"])
    if plan.get("cost"):
        lines += _format_cost(plan["cost"])
    return "\n".join(lines)


def _yes(flag: bool) -> str:
    return "changes" if flag else "no"


def _cell(value: Any, width: int = 44, keep_end: bool = False) -> str:
    """A value cut to `width` characters; keys keep their end, where sources differ (their split)."""
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) <= width:
        return text
    return "..." + text[3 - width:] if keep_end else text[: width - 3] + "..."


def _table(header: list[str], rows: list[list[Any]], notes: list[str] | None = None) -> list[str]:
    cells = [[_cell(c, 64, keep_end=True) if i == 0 else _cell(c) for i, c in enumerate(row)] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(header)]
    out = ["  " + "  ".join(h.ljust(w) for h, w in zip(header, widths))]
    for i, row in enumerate(cells):
        out.append("  " + "  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip())
        if notes and notes[i]:
            out.append(f"      why: {notes[i]}")
    return out


def _format_data(data: dict[str, Any]) -> list[str]:
    if not data:
        return []
    status = data.get("status")
    if status in ("unknown", "not built", "unusable"):
        return [f"\n-- what it trains on: not known yet: {data.get('why', status)}; {data.get('how', '')}"]
    if status == "built":
        lines = [f"\n-- what it trains on (mixture cache {data['cache']})"]
        rows = [[s["label"], s["mode"], s["rows"], f"{s['tokens']:,}", f"{trained_tokens(s):,}",
                 f"{s['trained_share_of_own_tokens']:.1%}", f"{s['share_of_trained_tokens']:.1%}",
                 s.get("rows_over_max_length", "?"), s["quarantined"]] for s in data["sources"]]
        lines += _table(["source", "mode", "rows", "tokens", "trained", "trained/own", "share of trained",
                         "over max_length", "quarantined"], rows)
        for s in data["sources"]:
            for reason, n in s["top_quarantine_reasons"]:
                lines.append(f"  quarantined {s['label']}: {n} x {reason}")
        for mode, m in sorted(data["modes"].items()):
            lines.append(f"  mode {mode}: {m['rows']} rows, {m['tokens']:,} tokens")
        lines.append(f"  rows longer than max_length {data['max_length']}: {data['rows_over_max_length']} "
                     f"({data['over_length_rows_are']})")
        if data.get("packing"):
            p = data["packing"]
            lines.append(f"  packing {p['strategy']} @ {p['seq_length']}: {p['documents']} documents -> "
                         f"{p['packed_rows']} rows, fill {p['efficiency']:.1%}, "
                         f"trained tokens {p['trained_token_share']:.1%}")
        return lines
    if status == "read":
        lines = ["\n-- preference pairs (read as the APO stage reads them)"]
        lines += _table(["source", "pairs", "think", "no_think", "quarantined"],
                        [[s["label"], s["rows"], s["modes"].get("think", 0), s["modes"].get("no_think", 0),
                          s["quarantined"]] for s in data["sources"]])
        lines += _table(["tokens", "p50", "p90", "p99", "max"],
                        [[k, *(f"{v[q]:,.0f}" for q in ("p50", "p90", "p99", "max"))]
                         for k, v in data["lengths"].items() if v])
        lines.append(f"  pairs longer than max_length {data['max_length']}: {data['pairs_over_max_length']}")
        return lines
    if data["prompts"] is None:
        return ["\n-- generation (synth): not known yet: no prompt source is on this machine "
                f"({', '.join(data['prompt_sources_not_counted'])})"]
    lines = ["\n-- generation (synth)",
             f"  {data['prompts']:,} prompts x {len(data['modes'])} modes x {data['models']} model(s) = "
             f"{data['generations']:,} generations, at most {data['generated_tokens_at_most']:,} tokens "
             f"({data['max_new_tokens']} each)"]
    if data.get("prompt_sources_not_counted"):
        lines.append(f"  not counted (not on this machine): {', '.join(data['prompt_sources_not_counted'])}")
    if data.get("gpu_hours_at_most") is not None:
        lines.append(f"  at most {data['gpu_hours_at_most']:,.1f} GPU-hours at "
                     f"{data['vllm_tokens_per_s']:,.0f} tokens/s")
    else:
        lines.append("  GPU-hours: give the vLLM throughput you measured (--vllm-tokens-per-s)")
    return lines


def _format_cost(cost: dict[str, Any]) -> list[str]:
    lines = [f"\n-- what it costs on {cost['gpus']} x {costs.GPUS[cost['gpu']]['name']} "
             f"(model {cost['model']}, {cost['parameters'] / 1e9:.2f}B parameters)"]
    lines.append(f"  global batch {cost['global_batch']} rows of up to {cost['max_length']:,} tokens; "
                 f"work from {cost['work_from']}")
    if "steps" in cost:
        epochs = f" ({cost['epochs']:g} epochs)" if "epochs" in cost else ""
        lines.append(f"  optimizer steps {cost['steps']:,}{epochs}")
    if "gpu_hours" in cost:
        speed = cost["throughput"]
        lines.append(f"  tokens {cost['tokens']:,.0f}; {speed['tokens_per_s']:,.0f} tokens/s per GPU "
                     f"({'estimate' if speed['estimate'] else 'measured'}: {speed['source']})")
        lines.append(f"  {cost['gpu_hours']:,.1f} GPU-hours, {cost['wall_hours']:,.1f} h wall on {cost['gpus']} GPUs")
    m = cost["memory"]
    lines.append(f"  memory per GPU ({m['sharding']}): weights {m['weights_gib']:.1f} + gradients "
                 f"{m['gradients_gib']:.1f} + optimizer {m['optimizer_gib']:.1f} GiB"
                 + (f" + reference model {m['reference_model_gib']:.1f}" if "reference_model_gib" in m else "")
                 + f"; activations {m['activations_checkpointed_gib']:.1f} GiB with checkpointing, "
                 f"{m['activations_full_gib']:.1f} without (logits {m['logits_gib']:.1f})")
    verdict = "fits" if m["fits"] else "DOES NOT FIT"
    lines.append(f"  total {m['total_gib']:.1f} GiB of {m['capacity_gib']} "
                 f"({'with' if m['checkpointing'] else 'without'} checkpointing, as the recipe says): {verdict}; "
                 f"{m['total_checkpointed_gib']:.1f} with / {m['total_full_gib']:.1f} without checkpointing")
    return lines
