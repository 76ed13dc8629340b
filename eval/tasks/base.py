"""What every task shares: the Task interface, the Example record, package data lookup.

A task is an object with a `name` and these methods; the eval stage, the merge sweep and the synth
filters call every task the same way, and none of them knows a task by name:

    examples(n, seed, ctx)              -> list[Example]      (ctx: TaskContext, see below)
    score(example, completion, mode)    -> dict[str, float]   ("score" is the task's headline number;
                                                               other keys are per-example details)
    aggregate(examples, scores)         -> dict[str, float]   (the task's reported numbers; "score" first)
    prompts()                           -> list[str]          (its prompts' text: synth decontaminates
                                                               training data against them)
    verify(reference, completion)       -> bool               (the completion gives the reference answer,
                                                               by the task's own scorer: synth's `verify:`)

`mode` is "think" or "no_think": the mode the prompt was sent in. `Task` below gives the defaults
(`aggregate` = mean of "score"); a task overrides what it reports differently (IFEval's four
numbers, RULER per sub-task and length).
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.chat import strip_think
from pipeline.core.errors import UserError
from pipeline.data.rows import prompt_of
from pipeline.data.sources import BadRow

__all__ = ["Example", "Task", "TaskContext", "mean", "package_dir", "sample_indices", "strip_think"]


@dataclass
class Example:
    """One prompt to send and what scoring needs; a task builds it from a benchmark row with `from_row`.

    `tools`: function schemas declared to the model (xml_tools). `prefill`: text the assistant turn
    starts with, after the generation prompt (RULER's answer prefix); the completion is what the
    model writes after it. `max_new_tokens`: the example's own generation budget (RULER's per-task
    tokens to generate); None: the recipe's sampling.max_new_tokens. `meta`: task-specific facts kept
    in the results (length, sub-task, ...)."""

    id: str
    messages: list[dict[str, Any]]
    target: Any
    tools: list[dict] | None = None
    prefill: str = ""
    max_new_tokens: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    template: dict[str, Any] = field(default_factory=dict)  # python_tools, custom_instructions

    @classmethod
    def from_row(cls, id: str, row: dict[str, Any], target: Any, **fields) -> Example:
        """An example whose prompt is a dataset row read as every stage reads one (pipeline.data.rows.prompt_of):
        `messages`, ShareGPT `conversations` or a bare `prompt`, up to the turn the model writes, with
        the row's tools (`tools`, `chat_template_kwargs.xml_tools`), python tools and custom instructions.
        A row that is not a prompt is an error naming the example."""
        try:
            messages, template = prompt_of(row)
        except BadRow as e:
            raise UserError(f"{id}: the benchmark row is not a prompt ({e}); is the task's data file damaged?") \
                from None
        tools = template.pop("xml_tools", None)
        return cls(id=id, messages=messages, target=target, tools=tools, template=template, **fields)


def _approx_tokens(text: str) -> int:
    return int(len(text.split()) * 1.3)


@dataclass
class TaskContext:
    """What a task may know about the model it is building prompts for.

    `count_tokens(text)`: tokens of plain text. `prompt_tokens(messages, prefill, tools)`: tokens of
    the whole prompt as the model sees it (template, system turn, generation prompt and prefill), in
    the longer of the modes evaluated. `max_new_tokens`: the generation budget. Without a model
    (tests, filters), counts are approximate (words x 1.3)."""

    count_tokens: Callable[[str], int] = _approx_tokens
    prompt_tokens: Callable[..., int] | None = None
    max_new_tokens: int = 0

    def prompt_length(self, messages: list[dict], prefill: str = "", tools: list | None = None) -> int:
        if self.prompt_tokens is not None:
            return self.prompt_tokens(messages, prefill, tools)
        return sum(self.count_tokens(m.get("content") or "") for m in messages) + self.count_tokens(prefill)


class Task:
    """Defaults for the interface above; tasks subclass it."""

    name = "task"

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        raise NotImplementedError

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        raise NotImplementedError

    def aggregate(self, examples: list[Example], scores: list[dict[str, float]]) -> dict[str, float]:
        return {"score": mean(s["score"] for s in scores)}

    def prompts(self) -> list[str]:
        """Every prompt the task can send, as text: by default the user turns of all its examples."""
        return [m["content"] for ex in self.examples() for m in ex.messages if m.get("role") == "user"]

    def verify(self, reference: Any, completion: str) -> bool:
        """Whether `completion` gives the `reference` answer, scored as this task scores its own examples."""
        return self.score(Example("verify", [], reference), completion, "think")["score"] == 1.0


def sample_indices(count: int, n: int | None, seed: int) -> list[int]:
    """`n` of `count` rows (all when n is None), in a seeded random order: the same seed draws the
    same examples on every machine, and a larger n extends a smaller one's draw."""
    order = list(range(count))
    random.Random(seed).shuffle(order)
    return order if n is None else order[:n]


def mean(values) -> float | None:
    values = list(values)
    return round(sum(values) / len(values), 4) if values else None


def package_dir(package: str, install: str) -> Path:
    """Directory of an installed data package, found without importing it (its imports are heavy)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the `{package}` data package is missing; {install} (`make setup` does)")
    return Path(list(spec.submodule_search_locations)[0])
