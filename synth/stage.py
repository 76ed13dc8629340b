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
what is not on disk yet, batch by batch, appending to an fsynced shard file (a killed run loses at
most the batch in flight and never duplicates) -> collect all shards -> filters (counted) -> rows,
`filtered.jsonl` (every dropped row with its reason) and `report.json`.

Many machines split one job with `--shard i/n` (each writes its own shard file under
`<out>.partial/shards/`); a final run without `--shard` generates whatever is still missing,
collects, filters and finishes the run directory. Every row records the model, the sampling
parameters and the finish reason.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections import Counter
from pathlib import Path

from tqdm.auto import tqdm

from pipeline.core.errors import UserError
from pipeline.core.files import write_jsonl
from pipeline.core.models import resolve_model
from pipeline.core.runs import join_run, parse_shard, run_lock, stage_run, write_json_atomic
from pipeline.data.rows import BadRow, prompt_of
from pipeline.data.sources import iter_rows
from pipeline.generation import Request, make_backend
from synth.filters import FILTERS, apply_filters, check_filters, decontamination
from synth.plan import plan, plan_text  # noqa: F401 (its part of `smolalign plan`, found here by the plan)
from synth.store import ShardStore, key_shard, read_all, work_key

SUMMARY_SECTIONS = [FILTERS]  # what a run writes in summary.json beside the shared keys (synth/filters.py)
BATCH = 64  # prompts generated between two fsyncs of the shard file
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
def generate_missing(recipe, items: list[dict], spec, store: ShardStore, done: set[str], desc: str) -> None:
    todo = [it for it in items if it["key"] not in done and it["key"] not in store]
    if not todo:
        return
    with make_backend(recipe.backend, resolve_model(spec.name_or_path), spec.dtype,
                      seed=recipe.sampling.seed) as backend:  # released before the next model loads
        _generate(recipe, todo, backend, store, desc)


def _generate(recipe, todo: list[dict], backend, store: ShardStore, desc: str) -> None:
    s = recipe.sampling
    bar = tqdm(total=len(todo), desc=desc, unit="prompt")
    t0, tokens = time.perf_counter(), 0
    for start in range(0, len(todo), BATCH):
        batch = todo[start:start + BATCH]
        requests = [request(it) for it in batch]
        completions = backend.generate(requests, s, desc=desc)
        store.append({**it, "text": it["prefill"] + c.text, "finish_reason": c.finish_reason,
                      "prompt_tokens": c.prompt_tokens, "completion_tokens": c.completion_tokens,
                      "sampling": s.model_dump()}
                     for it, c in zip(batch, completions))
        tokens += sum(c.completion_tokens for c in completions)
        elapsed = time.perf_counter() - t0
        bar.update(len(batch))
        bar.set_postfix(prompts_per_s=f"{bar.n / elapsed:.2f}", tokens_per_s=f"{tokens / elapsed:.1f}")
    bar.close()


def request(item: dict) -> Request:
    """The teacher's request for one work item: the prompt with the row's tools and instructions."""
    return Request.of(item["messages"], item.get("template", {}), item["mode"] == "think", item["prefill"])


def _generate_all(recipe, prompts, shard_dir: Path, shard: tuple[int, int]) -> list[list[dict]]:
    """Generate this shard's missing work for every model; return the work lists per model."""
    i, n = shard
    store = ShardStore(shard_dir / f"shard-{i}-of-{n}.jsonl" if n > 1 else shard_dir / "shard-all.jsonl")
    done = set(read_all(shard_dir, skip=store.path))  # what other shards wrote; our own rows are in `store`
    roles = [("teacher", recipe.teacher)] + ([("weak", recipe.weak)] if recipe.weak else [])
    lists = []
    for role, spec in roles:
        items = work_items(recipe, prompts, role, spec.name_or_path)
        mine = [it for it in items if n == 1 or key_shard(it["key"], n) == i]
        generate_missing(recipe, mine, spec, store, done, desc=f"{recipe.stage} {role}")
        lists.append(items)
    return lists


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
        lists = _generate_all(recipe, prompts, run.path / "shards", (0, 1))
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
        write_json_atomic(run.path / "report.json", report)
        run.metrics.update(report)
        run.summary.update(outputs=[out_name, "report.json", "filtered.jsonl"],
                           filters={"report": "report.json", **report})
        print(f"{recipe.stage}: {len(prompts)} prompts -> {len(rows)} rows -> kept {len(kept)}; filters {counts}")
    return recipe.output_path()

