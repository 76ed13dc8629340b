"""The rl stage's check on itself: prompts it never trains on (`eval_prompts:`), completed by the starting checkpoint
before training and by the trained one after, with the eval stage's generation backends and its requests
(eval/stage.py), and rewarded as training rewards: each row's task reward and its mode's format, per task and mode.

    {"file": "data/demo/rl_heldout.jsonl", "prompts": 24, "max_new_tokens": 64,
     "start": {"model": "runs/demo/apo", "tasks": {"ifeval": {"think": {"reward": 0.31, "format": 0.92,
               "cut": 0.04, "n": 24}, ...}}, "reward": 0.35, "format": 0.90},
     "end": {...the same for the trained model...}}

`reward` and `format` are the means over every held-out completion (each task and mode weighs by its prompts).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from eval.stage import request
from eval.tasks import Example
from pipeline.core.errors import UserError
from pipeline.core.files import write_json_atomic
from pipeline.core.schema import Source
from pipeline.data.rows import BadRow
from pipeline.data.sources import iter_rows
from pipeline.generation import SamplingSpec, make_backend
from rl.prompts import MODES, example_of, prompt_item, task_named


def held_out_items(recipe) -> list[dict[str, Any]]:
    """The held-out prompt rows, read and checked as training's are (a bad row is an error naming the file and
    the row: a check that silently skipped prompts would not compare like with like)."""
    spec = recipe.eval_prompts
    source = Source(path=spec.path, mode="from_row")
    items = []
    for index, row in enumerate(iter_rows(source)):
        try:
            items.append(prompt_item(recipe, source, index, row))
        except BadRow as e:
            raise UserError(f"{spec.path}: row {index + 1}: {e} (eval_prompts.path: prompt rows in the training "
                            "sources' layout, each with chat_template_kwargs.enable_thinking)") from None
    if not items:
        raise UserError(f"{spec.path}: no prompts (eval_prompts.path): add held-out prompt rows or remove the key")
    return items


def sampling_of(recipe) -> SamplingSpec:
    """The held-out generation: the recipe's, else greedy with the completion budget training allows."""
    if recipe.eval_prompts.sampling is not None:
        return recipe.eval_prompts.sampling
    budget = int(recipe.settings.max_completion_length)
    return SamplingSpec(temperature=0.0, top_p=1.0, max_new_tokens=budget, seed=recipe.seed)


def score_model(recipe, model_path: str, items: list[dict[str, Any]], label: str) -> dict[str, Any]:
    """Every held-out prompt in each of its modes, completed by `model_path` and rewarded."""
    sampling = sampling_of(recipe)
    renderer = {"today_date": recipe.chat.today_date, "knowledge_cutoff": recipe.chat.knowledge_cutoff}
    dtype = recipe.model.dtype if recipe.model.dtype != "auto" else "float32"
    with make_backend(recipe.eval_prompts.backend, model_path, dtype, seed=sampling.seed,
                      renderer_kwargs=renderer) as backend:
        out = {"model": label, "tasks": {}}
        for mode in MODES:
            mine = [it for it in items if mode in it["modes"]]
            if not mine:
                continue
            examples = [example_of(it["row"]) for it in mine]
            completions = backend.generate([request(ex, mode) for ex in examples], sampling,
                                           desc=f"held-out {label} /{mode}")
            for it, ex, c in zip(mine, examples, completions):
                name = it["task"] or "none"
                reward = task_named(it["task"]).reward(ex, c.text, mode) if it["task"] else None
                fmt = task_named("mode").reward(Example(it["id"], [], None), c.text, mode)
                out["tasks"].setdefault(name, {}).setdefault(mode, []).append(
                    {"id": it["id"], "reward": reward, "format": fmt, "cut": c.finish_reason == "length",
                     "completion": c.text})
    return summarise(out)


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Means per task and mode, and over every completion; the completions themselves are kept aside."""
    means: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
    rewards, formats = [], []
    for name, modes in result["tasks"].items():
        for mode, rows in modes.items():
            scored = [r["reward"] for r in rows if r["reward"] is not None]
            means[name][mode] = {"reward": _mean(scored), "format": _mean([r["format"] for r in rows]),
                                 "cut": _mean([float(r["cut"]) for r in rows]), "n": len(rows)}
            rewards += scored
            formats += [r["format"] for r in rows]
    return {"model": result["model"], "tasks": dict(means), "reward": _mean(rewards), "format": _mean(formats),
            "completions": result["tasks"]}


def _mean(values: list[float]) -> float | None:
    return round(sum(values) / len(values), 4) if values else None


def cached_score(recipe, path: Path, model_path: str, items, label: str) -> dict[str, Any]:
    """`score_model`, kept in `path`: a resumed run does not score the starting checkpoint again."""
    if path.is_file():
        try:
            return json.loads(path.read_text())
        except ValueError:
            pass  # cut short: score again
    result = score_model(recipe, model_path, items, label)
    write_json_atomic(path, result)
    return result


def report(recipe, items, start: dict[str, Any], end: dict[str, Any]) -> dict[str, Any]:
    """The held-out section: before and after, without the completions (they are in held_out.json)."""
    def lean(r):
        return {k: v for k, v in r.items() if k != "completions"}

    return {"file": recipe.eval_prompts.path, "prompts": len(items),
            "max_new_tokens": sampling_of(recipe).max_new_tokens, "start": lean(start), "end": lean(end)}
