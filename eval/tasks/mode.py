"""Mode adherence: think mode must open with a well-formed, non-empty think block followed by an
answer; no-think mode must emit an empty think block or none, and then an answer.

Prompts are everyday requests; the example's `meta["mode"]` says which mode it was asked in.
"""

from __future__ import annotations

import random

from eval.tasks.base import Example, Task, TaskContext
from pipeline.chat import think_block_problem

PROMPTS = [
    "What is the boiling point of water at sea level?", "Name three primary colours.",
    "How many days are in a leap year?", "Give me a synonym for 'happy'.", "What is 15% of 200?",
    "Which planet is closest to the Sun?", "Translate 'thank you' into French.",
    "What is the capital of Canada?", "How many sides does a hexagon have?", "Suggest a name for a cat.",
    "What does CPU stand for?", "Is 91 a prime number?",
]


class ModeTask(Task):
    name = "mode"

    def examples(self, n: int | None = None, seed: int = 0, ctx: TaskContext | None = None) -> list[Example]:
        order = list(range(len(PROMPTS)))
        random.Random(seed).shuffle(order)
        return [Example(id=f"mode-{i}", messages=[{"role": "user", "content": PROMPTS[i]}], target=None)
                for i in (order if n is None else order[:n])]

    def score(self, example: Example, completion: str, mode: str) -> dict[str, float]:
        return {"score": float(adheres(completion, mode))}


def adheres(completion: str, mode: str) -> bool:
    """Think mode: a well-formed, non-empty block then an answer; no-think: an empty block or none,
    and an answer. The block rules are the training data's (pipeline.chat.think_block_problem)."""
    text = completion.strip()
    return bool(text) and think_block_problem(text, mode == "think", required=True) is None
