"""The rl stage's prompts: read from the recipe's sources, each given its mode(s) and the task that rewards it,
and rendered as eval renders it, so a training prompt is token for token the prompt eval sends.

    for item in prompt_items(recipe, quarantine):        # {"row", "modes", "task", "id", "source"} per usable row
        for mode in item["modes"]:
            text = render(renderer, item, mode)          # eval.stage.request -> pipeline.generation.Renderer

Why the stage renders prompts itself: TRL 1.16's GRPOTrainer renders conversational prompts with one set of
`chat_template_kwargs` from its config, so every prompt would get one mode, and it knows nothing of a row's
tools, custom instructions or prefill. Given text, TRL tokenizes it as it is and generates after it (with
transformers or vLLM alike, from the same token ids), so what the policy is sent is exactly what
`smolalign eval` sends the same row in the same mode (tests/test_rl.py compares the token ids).

A row is rewarded by the eval task it names (`task`, with its `reference`: Task.training_rows writes both),
else by the recipe's `task` (against the row's `reference_column`: `solution` of a math dataset, by default
`reference`, else `answer`), else by the format of its mode alone. A row that is not a prompt, names an unknown
task or lacks the reference its task needs is quarantined with the reason (quarantine.jsonl), as every stage
quarantines a bad row.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from eval.stage import request
from eval.tasks import TASKS, Example, build_task, unknown_task
from pipeline.core.chat import resolve_thinking
from pipeline.core.errors import UserError
from pipeline.core.schema import source_label
from pipeline.data.reader import read_sources
from pipeline.data.rows import BadRow, prompt_of, row_mode

MODES = ("think", "no_think")


def prompt_items(recipe, quarantine: Path) -> Iterator[dict[str, Any]]:
    """Every usable prompt row, drawn by its source's budget (seeded by data.seed) through the one source reader
    (pipeline/data/reader.py: the budgets, quarantine and labels of every stage's sources), with the modes it is
    trained in and what rewards it; bad rows go to `quarantine` with their reason."""
    def parse(source, index: int, row) -> dict[str, Any]:
        return prompt_item(recipe, source, index, row)

    for _, item in read_sources(recipe.data.sources, parse, random.Random(recipe.data.seed), quarantine,
                                what="prompts"):
        yield item


def prompt_item(recipe, source, index: int, row: dict) -> dict[str, Any]:
    """A usable prompt row (row `index` of `source`), normalised as every stage's rows are (pipeline/data/rows.py
    prompt_of and row_mode): the row as its task reads it (with `id`, `task`, `reference` filled in), the modes
    it is trained in, and its source's label. Raises BadRow with the reason it is not usable."""
    messages, template = prompt_of(row)
    thinking = row_mode(source, row, messages)
    label = source_label(source.path, source.split, source.name)
    row = {**row, "id": str(row.get("id", f"{label}#{index}"))}
    name = row.get("task") if row.get("task") is not None else recipe.task
    if name is not None:
        if name not in TASKS:
            raise BadRow(f"task {name!r}: {unknown_task(str(name))}")
        reference = reference_of(recipe, row) if row.get("task") is None else row.get("reference")
        row = {**row, "task": name, "reference": reference}
        try:
            example_of(row)
        except UserError as e:
            raise BadRow(str(e)) from None
    modes = [m for m in MODES if resolve_thinking(messages, m == "think") == (m == "think")] \
        if recipe.prompt_modes == "both" else ["think" if thinking else "no_think"]
    if not modes:  # cannot happen: a system flag forces one mode, which `both` keeps
        raise BadRow("no mode this prompt can be rendered in")
    return {"row": row, "modes": modes, "task": name or "", "id": row["id"], "source": label}


def reference_of(recipe, row: dict[str, Any]) -> Any:
    """What the recipe's `task` scores a row naming no task against: its `reference_column`, else its `reference`,
    else its `answer` (as synth's `verify:` reads a row)."""
    if recipe.reference_column is not None:
        return row.get(recipe.reference_column)
    return row.get("reference") if row.get("reference") is not None else row.get("answer")


def example_of(row: dict[str, Any]) -> Example:
    """The eval example a prompt row stands for: its task's (with the row's reference), or, for a row no task
    rewards, the prompt alone."""
    if row.get("task"):
        return task_named(row["task"]).example_of(row)
    return Example.from_row(row["id"], row, target=None)


_TASKS: dict[str, Any] = {}


def task_named(name: str):
    """One instance of each task (its scorers keep state: math-verify's helper process, IFEval's Punkt)."""
    if name not in _TASKS:
        _TASKS[name] = build_task(name, None)
    return _TASKS[name]


def render(renderer, row: dict[str, Any], mode: str) -> str:
    """The prompt text of `row` in `mode`: eval's request for the row's example (messages, tools, python tools,
    custom instructions, prefill) rendered by pipeline.generation.Renderer with the recipe's date."""
    return renderer(request(example_of(row), mode))


def dataset_rows(recipe, renderer, quarantine: Path) -> Iterator[dict[str, str]]:
    """The rows of the training dataset, one per prompt and mode: the rendered `prompt` (what TRL sends the
    policy) and, for the rewards, `mode`, `task`, `id`, `source` and the row itself (`row`, as JSON text: rows
    of different tasks have different shapes)."""
    for item in prompt_items(recipe, quarantine):
        for mode in item["modes"]:
            yield {"prompt": render(renderer, item["row"], mode), "mode": mode, "task": item["task"],
                   "id": item["id"], "source": item["source"], "row": json.dumps(item["row"], ensure_ascii=False)}
