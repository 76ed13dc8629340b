"""Evaluation tasks. Each task makes examples and scores completions deterministically, with no
model involved, so eval/ uses them to score checkpoints and synth/ to filter generated data."""

from eval.tasks.base import Example, strip_think
from eval.tasks.ifeval import IFEvalTask
from eval.tasks.math import MathTask
from eval.tasks.mode import ModeTask
from eval.tasks.ruler import RulerTask
from eval.tasks.tools import ToolsTask

TASKS = {"ruler": RulerTask, "ifeval": IFEvalTask, "math": MathTask, "tools": ToolsTask, "mode": ModeTask}

__all__ = ["TASKS", "Example", "strip_think", "IFEvalTask", "MathTask", "ModeTask", "RulerTask", "ToolsTask"]
