"""What a completion earns, as TRL's GRPOTrainer asks for it: two reward functions, in this order,

    task_reward     the reward of the prompt row's own eval task (eval/tasks: Task.reward against the row's
                    reference: math-verify, IFEval's share of instructions, BFCL's checker, RULER's match, mode
                    adherence); None for a row no task rewards (TRL leaves it out of the weighted sum)
    format_reward   the format of the prompt's mode, scored as the eval's mode task scores it (a closed think
                    block with reasoning, then an answer, in /think; no think tag and no reasoning aloud in
                    /no_think)

weighted by the recipe's `rewards:` (TRL's `reward_weights`). Each completion is read as eval reads one: decoded
from its token ids with special tokens kept, up to the end of the turn (TRL's own `completions` drop special
tokens, which a think tag may be in another tokenizer). The task reward of an unfinished think block is 0 (the
Task interface's rule), so no task rewards a completion that never closes its reasoning.

Per step, TRL logs the mean of each reward; these functions add, per completion, `task/<task>/<mode>`,
`format/<mode>`, `length/<mode>` (tokens) and `cut/<mode>` (1 when it hit max_completion_length), which TRL
averages into the same log lines: the curves summary.json keeps. Every `rollouts_every`th step's completions
are kept with their rewards in rollouts/step-N.jsonl (a rerun after a kill rewrites a step whole).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from eval.tasks import Example
from pipeline.core.files import write_jsonl
from rl.prompts import example_of, task_named


class Rewards:
    """The reward functions of one run. `stop_ids`: the tokens that end a completion (TRL's eos ids)."""

    def __init__(self, tokenizer, stop_ids: list[int], rollouts: Path | None = None, every: int = 0):
        self.tokenizer, self.stop_ids = tokenizer, set(stop_ids)
        self.rollouts, self.every = rollouts, every
        rank, world = os.environ.get("RANK", "0"), int(os.environ.get("WORLD_SIZE", "1"))
        self.suffix = f".rank-{rank}" if world > 1 else ""  # each rank scores its own share of a step
        self._scored: tuple[Any, list[dict]] | None = None  # (the batch's completion_ids, what they earned)

    # TRL calls these with the completions and every column of the prompts' dataset, by keyword.
    def task_reward(self, completion_ids, mode, task, row, id, source, trainer_state=None, log_metric=None,
                    **_) -> list[float | None]:
        scored = self.score(completion_ids, mode, task, row, id, source, trainer_state, log_metric)
        return [s["task_reward"] for s in scored]

    def format_reward(self, completion_ids, mode, task, row, id, source, trainer_state=None, log_metric=None,
                      **_) -> list[float]:
        scored = self.score(completion_ids, mode, task, row, id, source, trainer_state, log_metric)
        return [s["format_reward"] for s in scored]

    def score(self, completion_ids, modes, tasks, rows, ids, sources, state=None, log_metric=None) -> list[dict]:
        """Both rewards of every completion of the batch, computed once (the second function reads them)."""
        if self._scored is not None and self._scored[0] is completion_ids:
            return self._scored[1]
        examples: dict[str, Example] = {}  # a prompt's completions share its example
        scored = []
        for ids_, mode, task, row, pid, source in zip(completion_ids, modes, tasks, rows, ids, sources):
            text, cut = self.text(ids_)
            if task and (pid, task) not in examples:
                examples[(pid, task)] = example_of(json.loads(row))
            task_reward = task_named(task).reward(examples[(pid, task)], text, mode) if task else None
            format_reward = task_named("mode").reward(Example(pid, [], None), text, mode)
            scored.append({"id": pid, "source": source, "task": task or None, "mode": mode, "completion": text,
                           "tokens": len(ids_), "cut": cut, "task_reward": task_reward,
                           "format_reward": format_reward})
        if log_metric is not None:
            for s in scored:
                self.log(log_metric, s)
        step = (state.global_step + 1) if state is not None else None
        if self.rollouts is not None and self.every and step is not None and (step - 1) % self.every == 0:
            self.rollouts.mkdir(parents=True, exist_ok=True)
            write_jsonl(self.rollouts / f"step-{step:06d}{self.suffix}.jsonl", ({"step": step, **s} for s in scored))
        self._scored = (completion_ids, scored)
        return scored

    def text(self, ids: list[int]) -> tuple[str, bool]:
        """(the completion as eval decodes it: up to its end-of-turn token, special tokens kept; whether it was
        cut at the length limit instead)."""
        end = next((i for i, t in enumerate(ids) if t in self.stop_ids), None)
        return self.tokenizer.decode(ids if end is None else ids[:end], skip_special_tokens=False), end is None

    @staticmethod
    def log(log_metric, s: dict) -> None:
        mode = s["mode"]
        if s["task_reward"] is not None:
            log_metric(f"task/{s['task']}/{mode}", float(s["task_reward"]))
        log_metric(f"format/{mode}", float(s["format_reward"]))
        log_metric(f"length/{mode}", float(s["tokens"]))
        log_metric(f"cut/{mode}", float(s["cut"]))
