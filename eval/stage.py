"""Eval stage: every model on every task, in both modes, with a report to compare them.

    smolalign eval --recipe recipes/smollm3/eval.yaml               # make eval RECIPE=... MODELS=a,b,c

Reads top to bottom: for each model -> backend (transformers on CPU, vLLM on GPU machines, or an
OpenAI-compatible server) -> for each task and mode: examples -> generate -> score -> per-model
JSON (every completion, score and finish reason) -> report.md (a table of models x tasks x modes)
and charts (RULER score by context length per model; task scores per mode).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from eval.backends import Request, Sampling, make_backend
from eval.tasks import Example, TaskContext, build_task, check_tasks
from pipeline.files import pyplot, save_figure
from pipeline.models import resolve_model
from pipeline.runs import stage_run, write_json_atomic


def check(recipe) -> list[tuple[str, str]]:
    """Stage-specific recipe checks (task names and options), run by `smolalign validate` too."""
    return check_tasks(recipe.tasks)


def evaluate_model(recipe, model_ref: str, progress: str = "", result: dict | None = None, save=None) -> dict:
    """Every task in every mode for one model. `result`: what an earlier attempt finished (those
    (task, mode) entries are skipped); `save(result)` is called after each (task, mode), so a crash
    loses at most the one in progress."""
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
            task = build_task(name, options)
            examples = task.examples(n=(options or {}).get("n"), seed=recipe.seed,
                                     ctx=task_context(recipe, backend, s.max_new_tokens))
            for mode in modes:
                completions = generate(backend, examples, mode, s, desc=f"{progress}{name}/{mode}")
                result["tasks"].setdefault(name, {})[mode] = summarise(task, examples, completions, mode)
                if save is not None:
                    save(result)
    return result


def generate(backend, examples: list[Example], mode: str, s, desc: str) -> list:
    """Completions in the examples' order. An example with its own budget (RULER: 30 tokens for
    variable tracking, 128 for needles) is generated with it; one backend call per budget."""
    by_budget: dict[int, list[int]] = {}
    for i, ex in enumerate(examples):
        by_budget.setdefault(ex.max_new_tokens or s.max_new_tokens, []).append(i)
    completions: list = [None] * len(examples)
    for budget, indices in by_budget.items():
        requests = [Request(examples[i].messages, enable_thinking=mode == "think", tools=examples[i].tools,
                            prefill=examples[i].prefill) for i in indices]
        suffix = f" ({budget} tokens)" if len(by_budget) > 1 else ""
        outputs = backend.generate(requests, Sampling(s.temperature, s.top_p, budget, s.seed), desc=desc + suffix)
        for i, completion in zip(indices, outputs):
            completions[i] = completion
    return completions


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
        results = []
        for i, model in enumerate(recipe.models):
            out = run.path / f"{slug(model)}.json"
            earlier = json.loads(out.read_text()) if out.is_file() else None  # what a killed attempt finished
            result = evaluate_model(recipe, model, progress=f"[{i + 1}/{len(recipe.models)}] ", result=earlier,
                                    save=lambda r, out=out: write_json_atomic(out, r))
            write_json_atomic(out, result)
            results.append(result)
        report = write_report(results, run.path, recipe.modes)
        run.metrics.update({"scores": {r["model"]: {t: {m: v["score"] for m, v in modes.items()}
                                                    for t, modes in r["tasks"].items()} for r in results}})
        print(report)
    return recipe.output_path()


def write_report(results: list[dict], out: Path, modes: list[str]) -> str:
    tasks = list(results[0]["tasks"]) if results else []
    header = "| model | " + " | ".join(f"{t} ({m})" for t in tasks for m in modes) + " |"
    lines = ["# Evaluation report", "", header, "|---" * (1 + len(tasks) * len(modes)) + "|"]
    for r in results:
        cells = [_cell(r["tasks"][t][m]) for t in tasks for m in modes]
        lines.append(f"| `{r['model']}` | " + " | ".join(cells) + " |")
    lines += ["", "Scores are means over examples (0 to 1). `(k cut)`: k completions hit max_new_tokens.",
              "Per-example completions and scores: one JSON per model next to this file."]
    if "ruler" in tasks:
        lines += ["", "## RULER by task and context length", ""] + ruler_tables(results, modes)
        lines += ["![ruler](ruler_by_length.png)"]
        plot_ruler(results, modes, out / "ruler_by_length.png")
    lines += ["", "## Scores by task", "", "![tasks](scores.png)"]
    plot_scores(results, tasks, modes, out / "scores.png")
    lines += details(results, tasks, modes)
    text = "\n".join(lines) + "\n"
    (out / "report.md").write_text(text)
    return text


SUMMARY_KEYS = {"score", "n", "truncated", "examples"}


def details(results: list[dict], tasks: list[str], modes: list[str]) -> list[str]:
    """Every number a task reports beyond its headline (IFEval's four, RULER per length and sub-task,
    ...), one table per task: a row per model and mode."""
    lines = []
    for task in tasks:
        keys = []
        for r in results:
            for mode in modes:
                keys += [k for k, v in r["tasks"][task][mode].items()
                         if k not in SUMMARY_KEYS and k not in keys and not isinstance(v, dict)]
        if not keys:
            continue
        lines += ["", f"## {task}: details", "", "| model | mode | " + " | ".join(keys) + " |",
                  "|---" * (2 + len(keys)) + "|"]
        for r in results:
            for mode in modes:
                summary = r["tasks"][task][mode]
                cells = [_value(summary.get(k)) for k in keys]
                lines.append(f"| `{r['model']}` | {mode} | " + " | ".join(cells) + " |")
    return lines


def ruler_tables(results: list[dict], modes: list[str]) -> list[str]:
    """A table per model and mode, as RULER reports it: its tasks x lengths, each task's metric, the
    mean per length; then the tasks that could not run here and why."""
    lines = []
    for r in results:
        for mode in modes:
            summary = r["tasks"]["ruler"][mode]
            lengths = sorted(int(k.removeprefix("length_")) for k in summary if k.startswith("length_"))
            header = "| task | metric | " + " | ".join(map(str, lengths)) + " | mean |"
            lines += [f"`{r['model']}`, {mode}:", "", header, "|---" * (3 + len(lengths)) + "|"]
            for task, by_length in summary.get("by_task_length", {}).items():
                cells = " | ".join(_value(by_length.get(str(k))) for k in lengths)
                lines.append(f"| {task} | {summary['metric'][task]} | {cells} | {_value(summary[task])} |")
            lines.append("| **mean** | | " + " | ".join(_value(summary[f"length_{k}"]) for k in lengths)
                         + f" | {_value(summary['score'])} |")
            lines += [f"- {task}: **unavailable**: {why}" for task, why in summary.get("unavailable", {}).items()]
            lines.append("")
    return lines


def _value(value) -> str:
    if value is None:
        return "–"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def _cell(summary: dict) -> str:
    cut = f" ({summary['truncated']} cut)" if summary["truncated"] else ""
    return f"{_value(summary['score'])}{cut}"


def plot_ruler(results, modes, path: Path) -> None:
    fig, axes = pyplot().subplots(1, len(modes), figsize=(5.5 * len(modes), 3.8), squeeze=False)
    for ax, mode in zip(axes[0], modes):
        for r in results:
            summary = r["tasks"]["ruler"][mode]
            by_length = {int(k.removeprefix("length_")): v for k, v in summary.items() if k.startswith("length_")}
            xs = sorted(by_length)
            ax.plot(xs, [by_length[x] for x in xs], marker="o", label=Path(r["model"]).name or r["model"])
        ax.set(xscale="log", xlabel="context length (tokens)", ylabel="RULER score", title=f"RULER, {mode}",
               ylim=(-0.05, 1.05))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def plot_scores(results, tasks, modes, path: Path) -> None:
    fig, axes = pyplot().subplots(1, len(modes), figsize=(5.5 * len(modes), 3.8), squeeze=False)
    width = 0.8 / max(len(results), 1)
    for ax, mode in zip(axes[0], modes):
        for i, r in enumerate(results):
            xs = [t + i * width for t in range(len(tasks))]
            scores = [r["tasks"][t][mode]["score"] for t in tasks]  # None: nothing could run (RULER qa offline)
            ax.bar(xs, [float("nan") if x is None else x for x in scores], width=width,
                   label=Path(r["model"]).name or r["model"])
        ax.set_xticks([t + width * (len(results) - 1) / 2 for t in range(len(tasks))], tasks)
        ax.set(ylabel="score", title=f"tasks, {mode}", ylim=(0, 1.05))
        ax.legend(fontsize=8)
    save_figure(fig, path)
