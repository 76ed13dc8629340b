"""Synthetic data stages.

    smolalign synth-traces --recipe recipes/smollm3/synth-traces.yaml [--shard i/n]
    smolalign synth-pairs  --recipe recipes/smollm3/synth-pairs.yaml  [--shard i/n]

synth-traces: prompts of non-reasoning datasets -> the teacher in thinking mode -> dual-mode SFT
rows (`rows.jsonl`: messages with the <think> trace, chat_template_kwargs) that the SFT stage reads.
A prompt row keeps its tool calls, tool results, tools and custom instructions (the one row path,
pipeline/data/sources.py and pipeline/data/rows.py): the teacher sees them, and the rows carry them on.
synth-pairs: the same kind of prompts -> strong model (chosen) and weak model (rejected), in each
mode -> preference rows (`pairs.jsonl`: prompt, chosen, rejected, chat_template_kwargs) that the
APO stage reads.

Reads top to bottom: prompts -> work items keyed by (prompt, model, sampling, mode) -> generate
what is not on disk yet, streamed through the backend (requests go in as the engine has room, every
completion is appended to the shard file as soon as it finishes, fsynced in groups: a killed run loses
at most what was in flight and never duplicates) -> collect all shards -> filters (counted) -> rows,
`filtered.jsonl` (every dropped row with its reason) and `report.json`. Progress (prompts/s, generated
tokens/s, ETA, the share cut at max_new_tokens) is in the bar and in summary.json's `generation`.

Many machines split one job with `--shard i/n` (each writes its own shard file under
`<out>.partial/shards/`); a final run without `--shard` generates whatever is still missing,
collects, filters and finishes the run directory. Every row records the model, the sampling
parameters and the finish reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
from collections import Counter
from contextlib import closing
from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.files import write_jsonl
from pipeline.core.models import resolve_model
from pipeline.core.runs import join_run, parse_shard, run_lock, stage_run, write_json_atomic
from pipeline.data.rows import BadRow, prompt_of
from pipeline.data.sources import iter_rows
from pipeline.generation import Request, make_backend
from synth.filters import FILTERS, apply_filters, check_filters, decontamination
from synth.plan import plan, plan_text  # noqa: F401 (its part of `smolalign plan`, found here by the plan)
from synth.progress import GENERATION, Progress
from synth.store import ShardStore, key_shard, keys_of_all, read_all, work_key

# what a run writes in summary.json beside the shared keys: the filter counts, and how generation went
SUMMARY_SECTIONS = [FILTERS, GENERATION]
THINK_PREFILL = "<think>\n"  # `prefill_think`: opens the think block for a teacher that does not


def check(recipe) -> list[tuple[str, str]]:
    """Stage-specific recipe checks, run by `smolalign validate` too: the filters' verifier task and eval recipes."""
    return check_filters(recipe.filters, Path(recipe._source or ".").parent)


# ----------------------------------------------------------------------------------------------
# Prompts and work
# ----------------------------------------------------------------------------------------------
def load_prompts(recipe) -> list[dict]:
    """[{"id", "messages", "template", "reference"}]: each row read by the one loader and normalised as
    training rows are (pipeline.data.rows.prompt_of): the conversation up to the turn the model writes,
    with its tool calls and tool results, and in `template` the row's tools and custom instructions;
    `reference`, what `verify:` checks against: the row's `reference` (an eval task's training rows carry
    one) or its `answer`. A row that is not a conversation is skipped and counted, with the first reason
    printed."""
    rng = random.Random(recipe.prompts.seed)
    prompts, seen, skipped = [], set(), Counter()
    for si, source in enumerate(recipe.prompts.sources):
        rows = []
        for index, row in enumerate(iter_rows(source)):
            try:
                messages, template = prompt_of(row)
            except BadRow as e:
                if not skipped:
                    print(f"warning: {source.path} row {index}: not a prompt ({e}); skipped")
                skipped[source.path] += 1
                continue
            identity = messages if not template else {"messages": messages, "template": template}
            pid = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
            if pid not in seen:  # the same prompt twice would only be generated twice
                seen.add(pid)
                reference = row.get("reference") if row.get("reference") is not None else row.get("answer")
                rows.append({"id": pid, "messages": messages, "template": template, "reference": reference})
        if source.fraction is not None:
            count = len(rows)
            rows = rng.sample(rows, min(len(rows), round(source.fraction * len(rows))))
            if count and not rows and not source.allow_empty:  # the source would vanish unsaid
                raise UserError(f"prompts.sources.{si} ({source.path}): fraction {source.fraction:g} of its {count} "
                                f"prompts selects none; raise it to at least {1 / count:.2g}, or remove the source")
        prompts += rows
    for path, count in skipped.items():
        print(f"warning: {path}: {count} row(s) skipped (not a conversation with a user turn)")
    return prompts[:recipe.max_prompts] if recipe.max_prompts else prompts


def work_items(recipe, prompts, role: str, model: str) -> list[dict]:
    sampling = recipe.sampling.model_dump()
    items = []
    for p in prompts:
        for mode in recipe.modes:
            kwargs = {"enable_thinking": mode == "think", **p["template"]}  # tools change what is generated
            prefill = THINK_PREFILL if mode == "think" and recipe.prefill_think else ""
            if prefill:  # part of the key: it changes what is generated
                kwargs["prefill"] = prefill
            # the role is part of the key: a chosen and a rejected answer are never the same work
            items.append({"key": work_key(p["messages"], f"{role}:{model}", sampling, kwargs), "prompt_id": p["id"],
                          "role": role, "model": model, "mode": mode, "messages": p["messages"],
                          "template": p["template"], "prefill": prefill})
    return items


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------
def generate_missing(recipe, items: list[dict], spec, store: ShardStore, done: set[str], desc: str) -> dict | None:
    """Generates the items not on disk yet; returns what this took (Progress.summary), None if nothing."""
    todo = [it for it in items if it["key"] not in done and it["key"] not in store]
    if not todo:
        return None
    with make_backend(recipe.backend, resolve_model(spec.name_or_path), spec.dtype,
                      seed=recipe.sampling.seed) as backend:  # released before the next model loads
        return _generate(recipe, todo, backend, store, desc)


def _generate(recipe, todo: list[dict], backend, store: ShardStore, desc: str) -> dict:
    """Streams `todo` through the backend and stores each completion as it finishes: no batch waits for
    its longest generation, and a failure or a kill loses only what was still in flight."""
    s = recipe.sampling
    progress = Progress(len(todo), desc, s.max_new_tokens)
    tagged = ((it, dataclasses.replace(request(it), seed=item_seed(it))) for it in todo)
    try:
        with closing(backend.stream(tagged, s)) as finished:
            for it, c in finished:
                store.add({**it, "text": it["prefill"] + c.text, "finish_reason": c.finish_reason,
                           "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                           "sampling": s.model_dump()})
                progress.update(c)
    finally:
        progress.close()
        print(progress.line(desc))
    return progress.summary()


def item_seed(item: dict) -> int:
    """The sampling seed of one work item, from its key (which holds the recipe's seed): a rerun that
    generates it again, in whatever company, asks for the same sample."""
    return int(item["key"][8:16], 16)


def request(item: dict) -> Request:
    """The teacher's request for one work item: the prompt with the row's tools and instructions."""
    return Request.of(item["messages"], item.get("template", {}), item["mode"] == "think", item["prefill"])


def _generate_all(recipe, prompts, shard_dir: Path, shard: tuple[int, int]) -> tuple[list[list[dict]], dict]:
    """Generate this shard's missing work for every model; return the work lists per model and what
    generating took per role (Progress.summary)."""
    i, n = shard
    done = keys_of_all(shard_dir, skip=_shard_path(shard_dir, shard))  # what other shards wrote
    roles = [("teacher", recipe.teacher)] + ([("weak", recipe.weak)] if recipe.weak else [])
    lists, took = [], {}
    with ShardStore(_shard_path(shard_dir, shard)) as store:  # our own keys are in `store`
        for role, spec in roles:
            items = work_items(recipe, prompts, role, spec.name_or_path)
            mine = [it for it in items if n == 1 or key_shard(it["key"], n) == i]
            summary = generate_missing(recipe, mine, spec, store, done, desc=f"{recipe.stage} {role}")
            if summary:
                took[role] = {"model": spec.name_or_path, **summary}
            lists.append(items)
    return lists, took


def _shard_path(shard_dir: Path, shard: tuple[int, int]) -> Path:
    i, n = shard
    return shard_dir / f"shard-{i}-of-{n}.jsonl" if n > 1 else shard_dir / "shard-all.jsonl"


# ----------------------------------------------------------------------------------------------
# Rows
# ----------------------------------------------------------------------------------------------
def trace_rows(prompts, teacher_items, generated) -> list[dict]:
    refs = {p["id"]: p.get("reference") for p in prompts}
    rows = []
    for it in teacher_items:
        g = generated.get(it["key"])
        if g is None:
            continue
        rows.append({"messages": it["messages"] + [{"role": "assistant", "content": g["text"].strip()}],
                     "chat_template_kwargs": row_kwargs(it),
                     "prompt": it["messages"], "reference": refs.get(it["prompt_id"]),
                     "meta": _meta(g)})
    return rows


def pair_rows(prompts, teacher_items, weak_items, generated) -> list[dict]:
    weak = {(it["prompt_id"], it["mode"]): generated.get(it["key"]) for it in weak_items}
    rows = []
    for it in teacher_items:
        chosen, rejected = generated.get(it["key"]), weak.get((it["prompt_id"], it["mode"]))
        if chosen is None or rejected is None:
            continue
        rows.append({"prompt": it["messages"],
                     "chosen": [{"role": "assistant", "content": chosen["text"].strip()}],
                     "rejected": [{"role": "assistant", "content": rejected["text"].strip()}],
                     "chat_template_kwargs": row_kwargs(it),
                     "meta": {"chosen": _meta(chosen), "rejected": _meta(rejected)}})
    return rows


def row_kwargs(item: dict) -> dict:
    """What the row tells the template: its mode, and the prompt row's tools and custom instructions,
    so that the SFT and APO stages render exactly what the teacher saw."""
    return {"enable_thinking": item["mode"] == "think", **item.get("template", {})}


def generation_section(generated: dict[str, dict], took: dict) -> dict:
    """summary.json's `generation`: what this run generated per role (prompts/s, tokens/s, cut share) and
    the share cut at max_new_tokens over every stored generation (earlier attempts and shards included)."""
    cut = sum(g["finish_reason"] == "length" for g in generated.values())
    return {"this_run": took, "stored": {"generations": len(generated), "cut": cut,
                                         "cut_share": round(cut / len(generated), 4) if generated else None}}


def _meta(g: dict) -> dict:
    return {"key": g["key"], "model": g["model"], "mode": g["mode"], "sampling": g["sampling"],
            "finish_reason": g["finish_reason"], "completion_tokens": g["completion_tokens"]}


def _empty_rejected(row) -> str | None:
    return "empty_rejected" if "rejected" in row and not row["rejected"][0]["content"].strip() else None


def _answers(row) -> list[tuple[str, bool, str]]:
    """The generations the strict filters judge: the trace, or the chosen answer of a pair
    (a weak model's rejected answer may be truncated or malformed; that is what it is for)."""
    thinking = row["chat_template_kwargs"]["enable_thinking"]
    if "chosen" in row:
        return [(row["chosen"][0]["content"], thinking, row["meta"]["chosen"]["finish_reason"])]
    return [(row["messages"][-1]["content"], thinking, row["meta"]["finish_reason"])]


# ----------------------------------------------------------------------------------------------
# The stage
# ----------------------------------------------------------------------------------------------
def run(recipe, overwrite: bool = False, shard: str | None = None) -> Path:
    i, n = parse_shard(shard)
    prompts = load_prompts(recipe)
    if not prompts:
        raise UserError(f"{recipe._source}: no prompts found in prompts.sources (rows need `messages` or `prompt`)")
    # the eval's prompts now: a source this machine cannot read stops the run before anything is generated
    contamination = decontamination(recipe.filters, Path(recipe._source or ".").parent)
    if n > 1:  # one machine's share: generate and stop; a final run without --shard collects
        partial = join_run(recipe)  # the run's manifest: shares of different recipes never mix
        with run_lock(partial / "shards" / f"shard-{i}-of-{n}"):  # one writer per shard file
            _generate_all(recipe, prompts, partial / "shards", (i, n))
        print(f"{recipe.stage}: shard {i}/{n} done -> {partial / 'shards'}; "
              f"run once more without --shard to collect, filter and finish")
        return partial
    with stage_run(recipe, overwrite) as run:
        lists, took = _generate_all(recipe, prompts, run.path / "shards", (0, 1))
        generated = read_all(run.path / "shards")
        if recipe.stage == "synth-traces":
            rows, out_name = trace_rows(prompts, lists[0], generated), "rows.jsonl"
        else:
            rows, out_name = pair_rows(prompts, lists[0], lists[1], generated), "pairs.jsonl"
        kept, dropped, counts = apply_filters(rows, recipe.filters, _answers, extra=_empty_rejected,
                                              contamination=contamination)
        write_jsonl(run.path / out_name, kept)
        write_jsonl(run.path / "filtered.jsonl", dropped)
        report = {"prompts": len(prompts), "generations": len(generated), "rows": len(rows), "kept": len(kept),
                  "filters": counts, "modes": {m: sum(r["chat_template_kwargs"]["enable_thinking"] == (m == "think")
                                                      for r in kept) for m in recipe.modes}}
        generation = generation_section(generated, took)
        write_json_atomic(run.path / "report.json", report)
        run.metrics.update(report)
        run.summary.update(outputs=[out_name, "report.json", "filtered.jsonl"],
                           filters={"report": "report.json", **report}, generation=generation)
        print(f"{recipe.stage}: {len(prompts)} prompts -> {len(rows)} rows -> kept {len(kept)}; filters {counts}")
    return recipe.output_path()

