"""Eval stage: every model on every task, in both modes, with a report to compare them.

    smolalign eval --recipe recipes/smollm3/eval.yaml               # make eval RECIPE=... MODELS=a,b,c

Reads top to bottom: for each model -> backend (transformers on CPU, vLLM on GPU machines, or an
OpenAI-compatible server) -> for each task and mode: examples -> generate -> score -> per-model
JSON (every completion, score and finish reason) -> report.md and charts (eval/report.py).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from eval.report import write_report
from eval.tasks import Example, TaskContext, build_task, check_tasks
from pipeline.core.models import resolve_model
from pipeline.core.runs import stage_run, write_json_atomic
from pipeline.generation import Request, make_backend


def check(recipe) -> list[tuple[str, str]]:
    """Stage-specific recipe checks (task names and options), run by `smolalign validate` too."""
    return check_tasks(recipe.tasks)


def evaluate_model(recipe, model_ref: str, progress: str = "", result: dict | None = None, save=None,
                   built: dict | None = None) -> dict:
    """Every task in every mode for one model. `result`: what an earlier attempt finished (those
    (task, mode) entries are skipped); `save(result)` is called after each (task, mode), so a crash
    loses at most the one in progress. `built`: the tasks and examples built for the models evaluated
    before this one (see task_examples); pass the same dict for every model of a run."""
    path = resolve_model(model_ref)
    result = result or {"model": model_ref, "path": path, "tasks": {}}
    todo = [(name, mode) for name in recipe.tasks for mode in recipe.modes
            if mode not in result["tasks"].get(name, {})]
    if not todo:
        return result
    renderer = {"today_date": recipe.chat.today_date, "knowledge_cutoff": recipe.chat.knowledge_cutoff}
    with make_backend(recipe.backend, path, recipe.dtype, seed=recipe.sampling.seed,
                      renderer_kwargs=renderer) as backend:  # released before the next model loads
        s = recipe.sampling
        for name, options in recipe.tasks.items():
            modes = [mode for mode in recipe.modes if (name, mode) in todo]
            if not modes:
                continue
            task, examples = task_examples(recipe, name, options, backend, s.max_new_tokens, built)
            for mode in modes:
                completions = generate(backend, examples, mode, s, desc=f"{progress}{name}/{mode}")
                result["tasks"].setdefault(name, {})[mode] = summarise(task, examples, completions, mode)
                if save is not None:
                    save(result)
    return result


def task_examples(recipe, name: str, options, backend, max_new_tokens: int, built: dict | None):
    """(task, its examples) as this model sees them. Examples are fitted to the model's tokenizer and chat
    template (RULER's lengths count the prompt as the model sees it), and nothing else of the model: models
    that share both (a run's checkpoints, a merge sweep's weights) share one build, kept in `built` (RULER at
    131072 tokens takes a minute to build). The task object travels with its examples: it holds what the
    build found (RULER's unavailable QA sources) for scoring."""
    key = (name, json.dumps(options, sort_keys=True), tokenizer_fingerprint(backend.tokenizer))
    if built is not None and key[2] is not None and key in built:
        return built[key]
    task = build_task(name, options)
    examples = task.examples(n=(options or {}).get("n"), seed=recipe.seed,
                             ctx=task_context(recipe, backend, max_new_tokens))
    if built is not None and key[2] is not None:
        built[key] = task, examples
    return task, examples


def tokenizer_fingerprint(tokenizer) -> str | None:
    """A hash of what a model's examples depend on: its tokenizer (vocabulary, merges, special tokens) and its
    chat template; None where the tokenizer cannot be serialised (a slow tokenizer): then nothing is shared."""
    rules = getattr(tokenizer, "backend_tokenizer", None)
    if rules is None:
        return None
    return hashlib.sha256((rules.to_str() + "\0" + str(tokenizer.chat_template)).encode()).hexdigest()


def generate(backend, examples: list[Example], mode: str, s, desc: str) -> list:
    """Completions in the examples' order. An example with its own budget (RULER: 30 tokens for
    variable tracking, 128 for needles) is generated with it; one backend call per budget."""
    by_budget: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        by_budget.setdefault(ex.max_new_tokens or s.max_new_tokens, []).append(i)
    completions: list = [None] * len(examples)
    for budget, indices in by_budget.items():
        requests = [request(examples[i], mode) for i in indices]
        suffix = f" ({budget} tokens)" if len(by_budget) > 1 else ""
        outputs = backend.generate(requests, s.model_copy(update={"max_new_tokens": budget}), desc=desc + suffix)
        for i, completion in zip(indices, outputs):
            completions[i] = completion
    return completions


def request(example: Example, mode: str) -> Request:
    """What the model is sent for an example in a mode: its messages, tools, python tools, custom
    instructions and prefill, as the synth stage sends a teacher a prompt row (synth/stage.py request)."""
    return Request.of(example.messages, {**example.template, "xml_tools": example.tools}, mode == "think",
                      example.prefill)


def task_context(recipe, backend, max_new_tokens: int) -> TaskContext:
    """Token counts as the evaluated model sees its prompts (template, system turn, generation prompt)."""
    tokenizer, render = backend.tokenizer, backend.render

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False).input_ids)

    def prompt_tokens(messages, prefill: str = "", tools=None) -> int:
        # the longer of the modes asked for: a prompt that fits in one fits in the other
        return max(count_tokens(render(Request(messages, enable_thinking=mode == "think", tools=tools,
                                               prefill=prefill))) for mode in recipe.modes)

    return TaskContext(count_tokens=count_tokens, prompt_tokens=prompt_tokens, max_new_tokens=max_new_tokens)


def summarise(task, examples, completions, mode: str) -> dict[str, Any]:
    scores = [task.score(ex, c.text, mode) for ex, c in zip(examples, completions)]
    rows = [{"id": ex.id, **score, "finish_reason": c.finish_reason, "completion_tokens": c.completion_tokens,
             "completion": c.text, **ex.meta} for ex, c, score in zip(examples, completions, scores)]
    return {**task.aggregate(examples, scores), "n": len(rows),
            "truncated": sum(r["finish_reason"] == "length" for r in rows), "examples": rows}


def slug(model_ref: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", model_ref.strip("/")).strip("_")


def run(recipe, overwrite: bool = False) -> Path:
    with stage_run(recipe, overwrite) as run:
        results, built = [], {}
        for i, model in enumerate(recipe.models):
            out = run.path / f"{slug(model)}.json"
            earlier = json.loads(out.read_text()) if out.is_file() else None  # what a killed attempt finished
            result = evaluate_model(recipe, model, progress=f"[{i + 1}/{len(recipe.models)}] ", result=earlier,
                                    save=lambda r, out=out: write_json_atomic(out, r), built=built)
            write_json_atomic(out, result)
            results.append(result)
        report = write_report(results, run.path, recipe.modes)
        scores = {r["model"]: {t: {m: v["score"] for m, v in modes.items()} for t, modes in r["tasks"].items()}
                  for r in results}
        run.metrics.update({"scores": scores})
        run.summary.update(outputs=["report.md"], scores=scores)
        print(report)
    return recipe.output_path()
