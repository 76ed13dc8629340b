"""What every task shares: the Task interface, the Example record, package data lookup.

A task is an object with a `name` and these methods; the eval stage, the merge sweep, the synth
filters and a training stage call every task the same way, and none of them knows a task by name:

    examples(n, seed, ctx)              -> list[Example]      (ctx: TaskContext, see below)
    score(example, completion, mode)    -> dict[str, float]   ("score" is the task's headline number;
                                                               other keys are per-example details)
    aggregate(examples, scores)         -> dict[str, float]   (the task's reported numbers; "score" first)
    prompts()                           -> list[str]          (its prompts' text: synth decontaminates
                                                               training data against them)

and, to train on (as nanochat's tasks give examples, evaluate and reward, one object for data, eval
and chat RL):

    training_rows(n, seed, mode, ctx)   -> list[dict]         (rows in the one row layout: the prompt, the
                                                               reference answer where it can be taught,
                                                               the mode, and the `reference` that scores it)
    reward(example, completion, mode)   -> float in [0, 1]    (what a completion earns: the task's own
                                                               scorer, for an RL stage and synth's `verify:`)
    example_of(row)                     -> Example            (the example a row of `training_rows` stands
                                                               for: an RL stage rewards against it)
    verify(reference, completion, mode) -> bool               (full reward against a row's `reference`:
                                                               synth's `verify:`)

`mode` is "think" or "no_think": the mode the prompt was sent in. `Task` below gives the defaults
(`aggregate` = mean of "score", `reward` = "score"); a task overrides what it reports differently
(IFEval's four numbers, RULER per sub-task and length) and what it rewards differently (IFEval: the
share of instructions followed).

What a reward sees. Every scorer reads the answer, after the think block: math's and RULER's the text
after `</think>`, IFEval's the response without its think block, BFCL's decoder the text after the last
`</think>`. A completion that opens a think block and never closes it has not answered (cut off, or
stopped, while reasoning) and earns 0 from every task; this is the one place a reward departs from its
scorer: BFCL's decoder, like BFCL, reads calls inside an unclosed block, and a policy rewarded for
that would learn never to close it. Whether the completion keeps its mode's format (a think block in
`/think`, none in `/no_think`) is the mode task's reward, not the other tasks'.
"""

from __future__ import annotations

import importlib.util
import random
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.core.chat import THINK_CLOSE, THINK_OPEN, strip_think
from pipeline.core.errors import UserError
from pipeline.data.rows import prompt_of
from pipeline.data.sources import BadRow

__all__ = ["MODES", "Example", "Task", "TaskContext", "mean", "package_dir", "sample_indices", "strip_think",
           "unanswered"]

MODES = ("think", "no_think")


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
    # Whether a completion is scored against each example's own reference (math's answer, IFEval's
    # instructions, BFCL's calls, RULER's needles); mode adherence has the same rule for every prompt.
    needs_reference = True

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        raise NotImplementedError

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        raise NotImplementedError

    def aggregate(self, examples: list[Example], scores: list[dict[str, float]]) -> dict[str, float]:
        return {"score": mean(s["score"] for s in scores)}

    def prompts(self) -> list[str]:
        """Every prompt the task can send, as text: by default the user turns of all its examples."""
        return [m["content"] for ex in self.examples() for m in ex.messages if m.get("role") == "user"]

    # ---- training: the rows a task teaches, the reward a completion earns ----------------------------
    def answer(self, example: Example) -> str | None:
        """The reference answer as a completion (what the model writes after the prompt and the example's
        prefill) that earns the full reward; None where the task has none to write (IFEval's
        instructions, mode adherence)."""
        return None

    def reward(self, example: Example, completion: str, mode: str) -> float:
        """What `completion`, sent in `mode`, earns: the task's own "score", in [0, 1]; 0 for a completion
        that never closes the think block it opened (see the module docstring)."""
        if unanswered(completion):
            return 0.0
        value = float(self.score(example, completion, mode)["score"])
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"task {self.name}: the score of {example.id} is {value}, outside [0, 1]; a task "
                             "whose score is not a share must override `reward`")
        return value

    def training_rows(self, n: int | None = None, seed: int = 0, mode: str = "no_think",
                      ctx: TaskContext | None = None) -> list[dict[str, Any]]:
        """Rows of this task's examples (`examples(n, seed, ctx)`) in the layout every stage reads
        (pipeline/data/rows.py): `messages` (the prompt as eval sends it, then the reference answer as the
        assistant turn where one is taught), `chat_template_kwargs` (the mode, the prompt's tools and
        instructions), and `task`, `id` and `reference`, from which `example_of` rebuilds the example.

        An answer is taught in no_think mode only, and only when this task's own reward gives it 1.0
        (BFCL rejects the first answer it lists for a few items): a think-mode row needs a reasoning
        trace, which no reference holds, so think-mode rows are prompts, for synth-traces (with `verify:`
        this task) or an RL stage to complete. The rows are the task's own examples: built on a
        benchmark, a task teaches that benchmark, so give it a training source (math's and IFEval's
        `source`) and keep the eval's prompts out (synth's `decontaminate_against`)."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        rows = []
        for example in self.examples(n, seed, ctx):
            answer = self.answer(example) if mode == "no_think" else None
            if answer is not None and self.reward(example, answer, mode) != 1.0:
                answer = None
            rows.append(self.row(example, mode, answer))
        return rows

    def row(self, example: Example, mode: str, answer: str | None = None) -> dict[str, Any]:
        """One training row for `example` in `mode`, with `answer` as its assistant turn when given."""
        messages = [dict(m) for m in example.messages]
        if answer is not None:
            messages.append({"role": "assistant", "content": example.prefill + answer})
        kwargs = {"enable_thinking": mode == "think", **example.template}
        if example.tools:
            kwargs["xml_tools"] = example.tools
        return {"messages": messages, "chat_template_kwargs": kwargs, "task": self.name, "id": example.id,
                "reference": self.reference(example)}

    def reference(self, example: Example) -> Any:
        """What a row carries so that this task scores a completion for it without its data (JSON)."""
        return {"target": example.target, "meta": example.meta, "prefill": example.prefill,
                "max_new_tokens": example.max_new_tokens}

    def with_reference(self, example: Example, reference: Any) -> Example:
        """`example` to be scored against `reference`, as `reference()` wrote it."""
        reference = reference or {}
        return replace(example, target=reference.get("target"), meta=dict(reference.get("meta") or {}),
                       prefill=reference.get("prefill") or "", max_new_tokens=reference.get("max_new_tokens"))

    def example_of(self, row: dict[str, Any]) -> Example:
        """The example a row of `training_rows` stands for: its prompt read by the one row path
        (`Example.from_row`; a taught answer, the trailing assistant turn, is not part of it) and its
        `reference`. A stage that reads such rows from a file rewards each completion against it."""
        example_id = str(row.get("id", self.name))
        if self.needs_reference and row.get("reference") is None:
            raise UserError(f"{example_id}: the row has no `reference`, which task {self.name} scores against; "
                            "write rows with Task.training_rows")
        return self.with_reference(Example.from_row(example_id, row, target=None), row.get("reference"))

    def verify(self, reference: Any, completion: str, mode: str = "think") -> bool:
        """Whether `completion` earns the full reward against `reference` (a row's, as `reference()` writes
        it), scored as this task scores its own examples: synth's `verify:` filter."""
        return self.reward(self.with_reference(Example("verify", [], None), reference), completion, mode) == 1.0


def unanswered(completion: str) -> bool:
    """The completion opens a think block and never closes it: it has not answered."""
    return completion.lstrip().startswith(THINK_OPEN) and THINK_CLOSE not in completion


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
