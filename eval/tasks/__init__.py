"""Evaluation tasks. Each task makes examples and scores completions deterministically, with no
model involved, so eval/ uses them to score checkpoints, synth/ to filter generated data, and a
training stage to teach their rows and reward completions. The interface every task follows is in
eval/tasks/base.py."""

from __future__ import annotations

import difflib
import inspect
from typing import Any

from eval.tasks.base import Example, Task, TaskContext, strip_think
from eval.tasks.ifeval import IFEvalTask
from eval.tasks.math import MathTask
from eval.tasks.mode import ModeTask
from eval.tasks.ruler import RulerTask
from eval.tasks.tools import ToolsTask

TASKS: dict[str, type[Task]] = {"ruler": RulerTask, "ifeval": IFEvalTask, "math": MathTask, "tools": ToolsTask,
                                "mode": ModeTask}


def task_options(name: str) -> set[str]:
    """Options a recipe may give a task: its constructor's parameters, plus `n` (examples to draw)."""
    return {"n"} | set(inspect.signature(TASKS[name]).parameters)


def check_tasks(tasks: dict[str, dict[str, Any]], key: str = "tasks") -> list[tuple[str, str]]:
    """(key path, problem) for unknown task names and options, for the recipe's error message."""
    problems = []
    for name, options in tasks.items():
        if name not in TASKS:
            problems.append((f"{key}.{name}", unknown_task(name)))
            continue
        allowed = task_options(name)
        for option in sorted(set(options or {}) - allowed):
            problems.append((f"{key}.{name}.{option}", f"unknown option; allowed: {', '.join(sorted(allowed))}"))
    return problems


def unknown_task(name: str) -> str:
    """The problem of a name that is not in TASKS, with the nearest registered name where it looks like a typo."""
    near = difflib.get_close_matches(name, TASKS, n=1)
    return "unknown task" + (f" (did you mean `{near[0]}`?)" if near else "") + f"; known: {', '.join(TASKS)}"


def build_task(name: str, options: dict[str, Any] | None) -> Task:
    return TASKS[name](**{k: v for k, v in (options or {}).items() if k != "n"})


__all__ = ["TASKS", "Example", "Task", "TaskContext", "build_task", "check_tasks", "strip_think", "unknown_task",
           "IFEvalTask", "MathTask", "ModeTask", "RulerTask", "ToolsTask"]
